package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
)

// reloadPolicy is the policy of TestReloadUnderLoad: route orders with
// target inv at rate, and route audit when audit is set.
func reloadPolicy(dir, down, listen, rate string, attempts int, audit bool) string {
	s := fmt.Sprintf(`listen: %q
admin: { listen: "127.0.0.1:0", token: %q }
storage: { dir: %q }
routes:
  - name: orders
    match: { path: /api/orders }
    targets:
      - { name: inv, url: %q, rate: %s, retry: { max_attempts: %d } }
`, listen, testToken, filepath.Join(dir, "data"), down, rate, attempts)
	if audit {
		s += fmt.Sprintf(`  - name: audit
    match: { path: /api/audit }
    targets:
      - { name: log, url: %q, rate: unlimited }
`, down)
	}
	return s
}

// TestReloadUnderLoad: five reloads with changes and one invalid policy,
// under steady load: no request refused, each new rate in force within a
// second, the invalid policy keeps the old one, a new route accepts, a
// removed one stops accepting and its messages are still delivered;
// every accepted message is delivered once. The downstream takes 50ms per
// request, so deliveries are in flight at every reload.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	down := startCountingDown(t)
	down.delay.Store(int64(50 * time.Millisecond))
	path := filepath.Join(dir, "policy.yaml")
	listen := freePort(t)
	writeFile(t, path, reloadPolicy(dir, down.url, listen, "50/s", 1, false))
	tn := startTestNode(t, path)
	defer tn.n.stop(10 * time.Second)

	var mu sync.Mutex
	var accepted []string
	var refused atomic.Int64
	var refusals []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	for range 2 {
		wg.Go(func() {
			for i := 0; i < 5000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Post(tn.base+"/api/orders", "application/json", strings.NewReader(`{"sku":"A1"}`))
				if err != nil {
					refused.Add(1)
					mu.Lock()
					refusals = append(refusals, err.Error())
					mu.Unlock()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode == 202 {
					accepted = append(accepted, resp.Header.Get("X-Sluice-Id"))
				} else {
					refused.Add(1)
					refusals = append(refusals, resp.Status)
				}
				mu.Unlock()
				time.Sleep(4 * time.Millisecond)
			}
		})
	}

	reload := func(text string) (int, map[string]any) {
		t.Helper()
		writeFile(t, path, text)
		return apiCall(t, "POST", tn.admin+"/v1/reload", testToken, nil)
	}
	rateInForce := func(want string) {
		t.Helper()
		start := time.Now()
		ok := waitFor(time.Second, func() bool { return targetState(t, tn, "orders", "inv")["rate"] == want })
		if !ok {
			t.Errorf("rate %s not in force 1s after the reload: %v", want, targetState(t, tn, "orders", "inv"))
		} else {
			t.Logf("rate %s in force %v after the reload answered", want, time.Since(start).Round(time.Millisecond))
		}
	}
	changed := func(res map[string]any, substr string) {
		t.Helper()
		b, _ := json.Marshal(res)
		if !strings.Contains(string(b), substr) {
			t.Errorf("reload result does not mention %q: %s", substr, b)
		}
	}
	time.Sleep(200 * time.Millisecond)

	// 1: a new rate.
	code, res := reload(reloadPolicy(dir, down.url, listen, "100/s", 1, false))
	if code != 200 {
		t.Fatalf("reload 1: %d %v", code, res)
	}
	changed(res, `target \"inv\": rate, burst changed`)
	rateInForce("100/s")

	// 2: a new route.
	code, res = reload(reloadPolicy(dir, down.url, listen, "100/s", 1, true))
	if code != 200 {
		t.Fatalf("reload 2: %d %v", code, res)
	}
	changed(res, `route \"audit\" added`)
	audit := postPath(t, tn.base+"/api/audit", 5, 202)

	// 3: retry and rate.
	code, res = reload(reloadPolicy(dir, down.url, listen, "200/s", 3, true))
	if code != 200 {
		t.Fatalf("reload 3: %d %v", code, res)
	}
	changed(res, "retry")
	rateInForce("200/s")

	// 4: invalid: the running policy stays.
	code, res = reload(strings.Replace(reloadPolicy(dir, down.url, listen, "400/s", 3, true), "rate: 400/s", "rate: fast", 1))
	if code != 422 {
		t.Fatalf("invalid reload: %d %v, want 422", code, res)
	}
	changed(res, "policy.yaml:8: routes[0].targets[0].rate")
	time.Sleep(300 * time.Millisecond)
	if r := targetState(t, tn, "orders", "inv")["rate"]; r != "200/s" {
		t.Errorf("rate after an invalid reload: %v, want 200/s kept", r)
	}

	// 5: the route audit is removed: 404 from now on; its messages stay.
	code, res = reload(reloadPolicy(dir, down.url, listen, "200/s", 3, false))
	if code != 200 {
		t.Fatalf("reload 5: %d %v", code, res)
	}
	changed(res, `route \"audit\" removed`)
	postPath(t, tn.base+"/api/audit", 1, 404)

	// 6: a new listen address needs a restart; the rate applies.
	code, res = reload(reloadPolicy(dir, down.url, "127.0.0.1:1", "300/s", 3, false))
	if code != 200 {
		t.Fatalf("reload 6: %d %v", code, res)
	}
	changed(res, "listen changed: takes effect at the next restart")
	rateInForce("300/s")

	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := refused.Load(); n > 0 {
		t.Fatalf("%d requests refused during the reloads: %v", n, refusals[:min(5, len(refusals))])
	}
	all := append(append([]string(nil), accepted...), audit...)
	t.Logf("%d requests accepted during six reloads", len(accepted))
	if !waitFor(30*time.Second, func() bool { return len(down.delivered()) >= len(all) }) {
		t.Fatalf("delivered %d of %d", len(down.delivered()), len(all))
	}
	got := down.delivered()
	for _, id := range all {
		if got[id] != 1 {
			t.Errorf("id %s delivered %d times", id, got[id])
		}
	}
}

// postPath posts n requests to url and checks each answer's status.
func postPath(t *testing.T, url string, n, want int) []string {
	t.Helper()
	var ids []string
	for range n {
		resp, err := http.Post(url, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("POST %s: %d, want %d", url, resp.StatusCode, want)
		}
		if want == 202 {
			ids = append(ids, resp.Header.Get("X-Sluice-Id"))
		}
	}
	return ids
}

// TestSIGHUPReloadsWithJSONLogs runs the real binary with --log-format
// json: SIGHUP reloads the policy (a changed rate shows in the admin API)
// instead of killing the process, and every log line is a JSON object.
func TestSIGHUPReloadsWithJSONLogs(t *testing.T) {
	dir := t.TempDir()
	down := startCountingDown(t)
	path := filepath.Join(dir, "policy.yaml")
	listen := freePort(t)
	adminAddr := freePort(t)
	pol := func(rate string) string {
		return strings.Replace(reloadPolicy(dir, down.url, listen, rate, 1, false), "127.0.0.1:0", adminAddr, 1)
	}
	writeFile(t, path, pol("50/s"))
	cmd := exec.Command(sluiceBin, "serve", "--policy", path, "--log-format", "json")
	logs := &testutil.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	admin := "http://" + adminAddr
	tn := &testNode{admin: admin}
	if !waitFor(20*time.Second, func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}) {
		t.Fatalf("not ready; logs:\n%s", logs)
	}
	writeFile(t, path, pol("75/s"))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return targetState(t, tn, "orders", "inv")["rate"] == "75/s" }) {
		t.Errorf("SIGHUP did not apply the new rate: %v", targetState(t, tn, "orders", "inv"))
	}
	// An invalid policy on SIGHUP: logged, the process lives on.
	writeFile(t, path, strings.Replace(pol("75/s"), "rate: 75/s", "rate: fast", 1))
	cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	if code, _ := apiCall(t, "GET", admin+"/healthz", "", nil); code != 200 {
		t.Fatalf("the process did not survive SIGHUP")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	out := logs.String()
	var reloaded, refused bool
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", sc.Text())
			continue
		}
		switch rec["msg"] {
		case "policy reloaded":
			reloaded = strings.Contains(fmt.Sprint(rec["changes"]), "rate")
		case "reload: the policy has errors; the running policy stays in force":
			refused = strings.Contains(fmt.Sprint(rec["err"]), "policy.yaml:8:")
		}
	}
	if !reloaded || !refused {
		t.Errorf("logs lack the reload (%v) or the refused reload with file:line (%v):\n%s", reloaded, refused, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "controls.json")); err == nil {
		t.Errorf("controls.json written with no operator action")
	}
}
