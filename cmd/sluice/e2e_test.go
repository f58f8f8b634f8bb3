package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/loadtest"
)

var sluiceBin string

// TestMain builds the real binary once; the end-to-end tests run it.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-e2e-")
	if err != nil {
		panic(err)
	}
	sluiceBin = filepath.Join(dir, "sluice")
	out, err := exec.Command("go", "build", "-race", "-o", sluiceBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type proc struct {
	cmd  *exec.Cmd
	logs *testutil.Buffer
}

// startSluice runs `sluice serve` and waits until it answers HTTP on addr.
// A TCP connect is not enough: serve listens before it opens the store and
// the admin listener, and serves only after both. The probe asks the
// status API about an id that cannot exist, which sluice answers itself
// (no route, no upstream sees it).
func startSluice(t *testing.T, policy, addr string) *proc {
	t.Helper()
	cmd := exec.Command(sluiceBin, "serve", "--policy", policy, "--log-level", "warn")
	logs := &testutil.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd, logs}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	probe := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := probe.Get("http://" + addr + "/_sluice/v1/messages/startup-probe")
		if err == nil {
			resp.Body.Close()
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("sluice did not listen on %s; logs:\n%s", addr, p.output())
	return nil
}

func (p *proc) output() string { return p.logs.String() }

// kill stops sluice with SIGKILL and waits for it to go.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
}

// stop stops sluice with SIGTERM and fails the test, with its logs, unless
// it exits with status 0 within 20 s.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("graceful stop: %v\nlogs:\n%s", err, p.output())
		}
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-done
		t.Fatalf("no exit within 20s of SIGTERM; logs:\n%s", p.output())
	}
}

// startDownstream runs a loadtest downstream until the test ends.
func startDownstream(t *testing.T, cfg loadtest.DownstreamConfig) *loadtest.Downstream {
	t.Helper()
	ds, err := loadtest.StartDownstream(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	return ds
}

// postOrder posts order i (its body padded with pad bytes) with the
// Idempotency-Key order-i and returns the id of a 202, or "" if it was not
// acknowledged (sluice killed mid-request, say). A 202 without an id, or
// whose body and X-Sluice-Id disagree, fails the test.
func postOrder(t *testing.T, client *http.Client, addr string, i, pad int) (id, key string) {
	key = fmt.Sprintf("order-%d", i)
	body := fmt.Sprintf(`{"order":%d,"pad":"%s"}`, i, strings.Repeat("x", pad))
	req, _ := http.NewRequest("POST", "http://"+addr+"/api/orders?n="+fmt.Sprint(i), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := client.Do(req)
	if err != nil {
		return "", key // killed mid-request: not acknowledged, no promise made
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", key
	}
	var b struct{ ID, Status, StatusURL string }
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil || b.ID == "" || b.ID != resp.Header.Get("X-Sluice-Id") {
		t.Errorf("bad 202: %v %+v header %q", err, b, resp.Header.Get("X-Sluice-Id"))
		return "", key
	}
	return b.ID, key
}

func writePolicy(t *testing.T, dir, addr, inv, del string) string {
	t.Helper()
	p := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf(`listen: %q
storage:
  dir: %q
  fsync: always
  segment_bytes: 256KiB
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST, PUT] }
    idempotency_header: Idempotency-Key
    max_body: 64KiB
    targets:
      - name: inventory
        url: %s
        rate: 400/s
        burst: 40
        concurrency: 8
        retry: { max_attempts: 50, initial: 50ms, max: 500ms }
      - name: delivery
        url: %s/base
        rate: 200/s
        burst: 20
        concurrency: 4
        retry: { max_attempts: 50, initial: 50ms, max: 500ms }
`, addr, filepath.Join(dir, "data"), inv, del)
	writeFile(t, p, pol)
	return p
}

// TestKill9LosesNothing is the product's promise, end to end: orders are
// posted by concurrent clients; sluice is killed with SIGKILL in mid-stream
// (while accepting and while delivering); it is restarted; every order that
// was answered 202 arrives at every target.
func TestKill9LosesNothing(t *testing.T) {
	// The downstreams live in the test process and outlive the kills.
	inv := startDownstream(t, loadtest.DownstreamConfig{FailRate: 0.05, Seed: 1})
	del := startDownstream(t, loadtest.DownstreamConfig{})

	dir := t.TempDir()
	addr := freePort(t)
	policy := writePolicy(t, dir, addr, inv.URL(), del.URL())

	var mu sync.Mutex
	var acked []string
	client := &http.Client{Timeout: 5 * time.Second}
	post := func(i int) {
		if id, _ := postOrder(t, client, addr, i, 512); id != "" {
			mu.Lock()
			acked = append(acked, id)
			mu.Unlock()
		}
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	seq := 0
	for round := range 3 {
		p := startSluice(t, policy, addr)
		// 16 clients post until this round's quota is acknowledged, then we kill.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					mu.Lock()
					seq++
					i := seq
					mu.Unlock()
					post(i)
				}
			}()
		}
		target := 400 * (round + 1)
		deadline := time.Now().Add(30 * time.Second)
		for count() < target && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		p.kill(t)
		close(stop)
		wg.Wait()
		t.Logf("round %d: killed with %d acknowledged so far; delivered inventory=%d delivery=%d",
			round, count(), len(inv.Deliveries()), len(del.Deliveries()))
		if count() < target {
			t.Fatalf("round %d: only %d acknowledged in 30s; logs:\n%s", round, count(), p.output())
		}
	}

	// Final life: everything acknowledged must arrive at both targets.
	p := startSluice(t, policy, addr)
	ids := append([]string(nil), acked...)
	for name, d := range map[string]*loadtest.Downstream{"inventory": inv, "delivery": del} {
		if err := loadtest.WaitDrained(context.Background(), ids, d, 60*time.Second); err != nil {
			missing := d.Missing(ids)
			var status []byte
			if resp, err := http.Get("http://" + addr + "/_sluice/v1/messages/" + missing[0]); err == nil {
				status, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			t.Fatalf("target %s: %d of %d acknowledged orders never arrived (e.g. %v): %v\nstatus of the first: %s\nlogs:\n%s",
				name, len(missing), len(ids), missing[:min(5, len(missing))], err, status, p.output())
		}
		dups := 0
		for _, n := range d.Deliveries() {
			if n > 1 {
				dups += n - 1
			}
		}
		t.Logf("target %s: all %d acknowledged orders delivered; %d duplicate deliveries (attempts in flight at the kills)", name, len(ids), dups)
	}
	// The status API agrees.
	resp, err := http.Get("http://" + addr + "/_sluice/v1/messages/" + ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Targets []struct {
			Target     string
			Status     string
			StatusCode int `json:"status_code"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || len(st.Targets) != 2 {
		t.Fatalf("status: %v %+v", err, st)
	}
	for _, ts := range st.Targets {
		if ts.Status != "delivered" || ts.StatusCode != 200 {
			t.Errorf("status of %s at %s = %+v, want delivered 200", ids[0], ts.Target, ts)
		}
	}
}

// TestCheckReportsFileLine: `sluice check` names the file, line and field.
func TestCheckReportsFileLine(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	os.WriteFile(p, []byte("routes:\n  - name: orders\n    match: { path: /api/orders }\n    targets:\n      - name: inv\n        url: http://127.0.0.1:1\n        rate: -5/s\n"), 0o644)
	out, err := exec.Command(sluiceBin, "check", "--policy", p).CombinedOutput()
	if err == nil {
		t.Fatalf("check accepted a negative rate:\n%s", out)
	}
	if !strings.Contains(string(out), p+":7:") || !strings.Contains(string(out), "rate") {
		t.Fatalf("check output does not name %s:7 and the field:\n%s", p, out)
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("routes:\n  - name: orders\n    match: { path: /api/orders }\n    targets:\n      - name: inv\n        url: http://127.0.0.1:1\n"), 0o644)
	if out, err := exec.Command(sluiceBin, "check", "--policy", good).CombinedOutput(); err != nil || !strings.Contains(string(out), "ok") || strings.Contains(string(out), "warning") {
		t.Fatalf("check of a good policy: %v\n%s", err, out)
	}
	// A buffer route that lists GET: valid, with a warning naming the line.
	get := filepath.Join(dir, "get.yaml")
	os.WriteFile(get, []byte("routes:\n  - name: orders\n    match: { path: /api/orders, methods: [GET, POST] }\n    targets:\n      - name: inv\n        url: http://127.0.0.1:1\n"), 0o644)
	if out, err := exec.Command(sluiceBin, "check", "--policy", get).CombinedOutput(); err != nil || !strings.Contains(string(out), "warning: "+get+":3: routes[0].match.methods") {
		t.Fatalf("check of a buffer route listing GET: %v\n%s", err, out)
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(sluiceBin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "sluice ") {
		t.Fatalf("version: %v %q", err, out)
	}
}

// TestHTTPErrors: bad requests get a status and a JSON error body, and
// harm nothing already accepted.
func TestHTTPErrors(t *testing.T) {
	ds := startDownstream(t, loadtest.DownstreamConfig{})
	dir := t.TempDir()
	addr := freePort(t)
	p := startSluice(t, writePolicy(t, dir, addr, ds.URL(), ds.URL()), addr)
	base := "http://" + addr
	resp, err := http.Post(base+"/api/orders", "application/json", strings.NewReader(`{"ok":1}`))
	if err != nil || resp.StatusCode != 202 {
		t.Fatalf("good order: %v %v", err, resp)
	}
	id := resp.Header.Get("X-Sluice-Id")
	if loc := resp.Header.Get("Location"); loc != "/_sluice/v1/messages/"+id {
		t.Fatalf("Location = %q", loc)
	}
	resp.Body.Close()

	cases := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/nowhere", "{}", 404, "no_route"},
		{"GET", "/api/orders", "", 405, "method_not_allowed"},
		{"GET", "/_sluice/v1/messages/not-an-id", "", 400, "bad_id"},
		{"GET", "/_sluice/v1/messages/00000000000000000000000000", "", 404, "not_found"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		var eb struct {
			Error struct{ Code, Message string }
		}
		derr := json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != c.status || derr != nil || eb.Error.Code != c.code || eb.Error.Message == "" {
			t.Errorf("%s %s: status %d body %+v (%v); want %d %s", c.method, c.path, resp.StatusCode, eb, derr, c.status, c.code)
		}
	}
	// An oversized body is refused from its Content-Length, before it is
	// sent (a raw connection: a client still writing would see a reset).
	oc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(oc, "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 65<<10)
	oc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp413, err := http.ReadResponse(bufio.NewReader(oc), nil)
	if err != nil {
		t.Fatalf("oversized body: %v", err)
	}
	b413, _ := io.ReadAll(resp413.Body)
	oc.Close()
	if resp413.StatusCode != 413 || !strings.Contains(string(b413), "body_too_large") {
		t.Errorf("oversized body: %d %s, want 413 body_too_large", resp413.StatusCode, b413)
	}
	// A raw malformed request (bad chunked encoding) gets 400, and the server lives on.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n0\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.Contains(line, "400") {
		t.Errorf("malformed chunked body: %q, want 400", line)
	}
	// What was accepted before is untouched and gets delivered.
	if err := loadtest.WaitDrained(context.Background(), []string{id}, ds, 10*time.Second); err != nil {
		t.Fatalf("accepted order not delivered after bad requests: %v", err)
	}
	// Offline, inspect --verify finds the data intact.
	p.stop(t)
	out, err := exec.Command(sluiceBin, "inspect", "--verify", "--data", filepath.Join(dir, "data")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no damage") || !strings.Contains(string(out), "queue orders") {
		t.Fatalf("inspect --verify: %v\n%s", err, out)
	}
}
