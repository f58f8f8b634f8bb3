package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// chaosDown is the downstream of the chaos test: it answers 400 for good to
// requests marked X-Mode: dead, 500 to the first attempt of those marked
// flaky, and 200 otherwise, and counts the 2xx answers per Idempotency-Key.
type chaosDown struct {
	mu    sync.Mutex
	ok    map[string]int
	tried map[string]int
}

func (d *chaosDown) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tried[key]++
	switch r.Header.Get("X-Mode") {
	case "dead":
		w.WriteHeader(400)
		return
	case "flaky":
		if d.tried[key] == 1 {
			w.WriteHeader(500)
			return
		}
	}
	d.ok[key]++
	w.WriteHeader(200)
}

func (d *chaosDown) okCount(key string) int { d.mu.Lock(); defer d.mu.Unlock(); return d.ok[key] }

func (d *chaosDown) received() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for k := range d.ok {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestChaosCountsAddUp: two routes, the real binary killed with SIGKILL
// while clients post, a downstream that fails some requests for a while
// and some for good, dead letters purged, delivered ones replayed, a
// target paused past the retention so that its messages expire. After
// each event the counts of every target add up, and agree with the test's
// own record of what was acknowledged: accepted = delivered + dead +
// expired + purged + pending. It takes over a minute (the shortest
// retention a policy allows is 1m).
func TestChaosCountsAddUp(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a one-minute retention")
	}
	down := &chaosDown{ok: map[string]int{}, tried: map[string]int{}}
	ds := httptest.NewServer(down)
	defer ds.Close()
	dir := t.TempDir()
	addr, adminAddr := freePort(t), freePort(t)
	admin := "http://" + adminAddr
	policy := filepath.Join(dir, "policy.yaml")
	writeFile(t, policy, fmt.Sprintf(`listen: %q
admin: { listen: %q, token: %q }
storage: { dir: %q, fsync: always, retention: 1m, segment_bytes: 64KiB }
routes:
  - name: orders
    match: { path: /api/orders }
    idempotency_header: Idempotency-Key
    targets:
      - { name: inv, url: %q, rate: unlimited, concurrency: 8, retry: { max_attempts: 5, initial: 20ms, max: 100ms }, breaker: { failures: 100000 } }
  - name: audit
    match: { path: /api/audit }
    idempotency_header: Idempotency-Key
    targets:
      - { name: arch, url: %q, rate: unlimited, retry: { max_attempts: 5, initial: 20ms, max: 100ms } }
`, addr, adminAddr, testToken, filepath.Join(dir, "data"), ds.URL, ds.URL))

	// The test's own record: key -> id of every acknowledged request.
	var mu sync.Mutex
	acked := map[string]string{}
	mode := map[string]string{}
	client := &http.Client{Timeout: 3 * time.Second}
	post := func(path, key, m string) bool {
		req, _ := http.NewRequest("POST", "http://"+addr+path, strings.NewReader(`{"k":"`+key+`"}`))
		req.Header.Set("Idempotency-Key", key)
		if m != "" {
			req.Header.Set("X-Mode", m)
		}
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != 202 {
			return false
		}
		mu.Lock()
		if prev, ok := acked[key]; ok && prev != resp.Header.Get("X-Sluice-Id") {
			t.Errorf("key %s acknowledged as %s, then as %s", key, prev, resp.Header.Get("X-Sluice-Id"))
		}
		acked[key], mode[key] = resp.Header.Get("X-Sluice-Id"), m
		mu.Unlock()
		return true
	}
	// postAll posts keys until each is acknowledged (a repeat after a
	// kill gets the first id back: the key is the client's retry).
	postAll := func(path string, keys []string, modeOf func(int) string, p **proc, killAfter int) {
		var wg sync.WaitGroup
		var done sync.Map
		killed := make(chan struct{})
		if killAfter > 0 {
			go func() {
				defer close(killed)
				deadline := time.Now().Add(20 * time.Second)
				for time.Now().Before(deadline) {
					n := 0
					done.Range(func(any, any) bool { n++; return true })
					if n >= killAfter {
						break
					}
					time.Sleep(2 * time.Millisecond)
				}
				(*p).cmd.Process.Signal(syscall.SIGKILL)
				(*p).cmd.Wait()
				t.Logf("killed with SIGKILL after %d of %d %s acknowledged", killAfter, len(keys), path)
				*p = startSluice(t, policy, addr)
			}()
		} else {
			close(killed)
		}
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(keys); i += 8 {
					for try := 0; try < 200; try++ {
						if post(path, keys[i], modeOf(i)) {
							done.Store(i, true)
							break
						}
						time.Sleep(50 * time.Millisecond)
					}
				}
			}()
		}
		wg.Wait()
		<-killed
	}
	var p *proc
	counts := func(route, target string) map[string]any {
		t.Helper()
		if p.cmd.ProcessState != nil || p.cmd.Process.Signal(syscall.Signal(0)) != nil {
			t.Fatalf("sluice is not running; its output:\n%s", p.output())
		}
		code, body := apiCall(t, "GET", admin+"/v1/routes/"+route+"/counts", testToken, nil)
		if code != 200 {
			t.Fatalf("counts of %s: %d %v", route, code, body)
		}
		for _, x := range body["targets"].([]any) {
			if x := x.(map[string]any); x["target"] == target {
				identity(t, x)
				return x
			}
		}
		t.Fatalf("no target %s in %v", target, body)
		return nil
	}
	// expect checks a target's counts against what the test expects of
	// its record, waiting up to 30s for the drainers to get there.
	expect := func(route, target string, want map[string]float64) {
		t.Helper()
		var c map[string]any
		ok := waitFor(30*time.Second, func() bool {
			c = counts(route, target)
			for k, v := range want {
				if c[k] != v {
					return false
				}
			}
			return true
		})
		if !ok {
			t.Fatalf("%s/%s counts %v, want %v", route, target, c, want)
		}
	}

	p = startSluice(t, policy, addr)
	if code, body := apiCall(t, "POST", admin+"/v1/routes/audit/targets/arch/pause", testToken, nil); code != 200 {
		t.Fatalf("pause: %d %v", code, body)
	}
	// Audit, first part: paused past the retention, these will expire.
	var auditA []string
	for i := range 60 {
		auditA = append(auditA, fmt.Sprintf("audit-a-%d", i))
	}
	postAll("/api/audit", auditA, func(int) string { return "" }, &p, 30)
	started := time.Now()

	// Orders: 1 in 10 fails for good, 1 in 5 once; a kill in mid-stream.
	var orders []string
	for i := range 400 {
		orders = append(orders, fmt.Sprintf("order-%d", i))
	}
	modeOf := func(i int) string {
		switch {
		case i%10 == 3:
			return "dead"
		case i%5 == 1:
			return "flaky"
		}
		return ""
	}
	postAll("/api/orders", orders, modeOf, &p, 150)
	var deadKeys []string
	for i, k := range orders {
		if modeOf(i) == "dead" {
			deadKeys = append(deadKeys, k)
		}
	}
	nDead := float64(len(deadKeys))
	expect("orders", "inv", map[string]float64{"accepted": 400, "delivered": 400 - nDead, "dead": nDead, "pending": 0, "expired": 0})

	// Purge five dead letters.
	var purge []string
	for _, k := range deadKeys[:5] {
		purge = append(purge, acked[k])
	}
	if code, body := apiCall(t, "POST", admin+"/v1/routes/orders/targets/inv/dead/purge", testToken, map[string]any{"ids": purge}); code != 200 || body["purged"] != 5.0 {
		t.Fatalf("purge: %d %v", code, body)
	}
	expect("orders", "inv", map[string]float64{"accepted": 400, "delivered": 400 - nDead, "dead": nDead - 5, "purged": 5, "pending": 0})

	// Replay what was delivered in a window: the downstream gets those again.
	code, body := apiCall(t, "GET", admin+"/v1/routes/orders/messages?target=inv&state=delivered&limit=1000", testToken, nil)
	if code != 200 {
		t.Fatalf("list: %d %v", code, body)
	}
	rows := body["messages"].([]any)
	from := rows[100].(map[string]any)["accepted_at"].(string)
	to := rows[150].(map[string]any)["accepted_at"].(string)
	code, body = apiCall(t, "GET", admin+"/v1/routes/orders/messages?target=inv&state=delivered&limit=1000&since="+url.QueryEscape(from)+"&until="+url.QueryEscape(to), testToken, nil)
	if code != 200 {
		t.Fatalf("list of the window: %d %v", code, body)
	}
	window := body["messages"].([]any)
	before := map[string]int{}
	for _, r := range window {
		k := r.(map[string]any)["idempotency_key"].(string)
		before[k] = down.okCount(k)
	}
	code, body = apiCall(t, "POST", admin+"/v1/routes/orders/targets/inv/replay", testToken, map[string]any{"state": "delivered", "since": from, "until": to, "rate": "unlimited"})
	if code != 200 || body["replayed"] != float64(len(window)) || len(window) < 40 {
		t.Fatalf("replay of %d: %d %v", len(window), code, body)
	}
	// Killed again while the replays go out.
	p.kill(t)
	p = startSluice(t, policy, addr)
	if !waitFor(30*time.Second, func() bool {
		for k, n := range before {
			if down.okCount(k) <= n {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the replayed messages did not all reach the downstream again")
	}
	expect("orders", "inv", map[string]float64{"accepted": 400, "delivered": 400 - nDead, "dead": nDead - 5, "purged": 5, "pending": 0})

	// Every acknowledged order but the dead ones reached the downstream,
	// and reconcile agrees with the downstream's own list.
	for i, k := range orders {
		if modeOf(i) != "dead" && down.okCount(k) == 0 {
			t.Fatalf("acknowledged order %s (%s) never delivered", k, acked[k])
		}
	}
	list := filepath.Join(dir, "received.txt")
	var okKeys []string
	for _, k := range down.received() {
		if strings.HasPrefix(k, "order-") {
			okKeys = append(okKeys, k)
		}
	}
	writeFile(t, list, strings.Join(okKeys, "\n")+"\n")
	var out bytes.Buffer
	if code := run([]string{"reconcile", "--admin", admin, "--token", testToken, "--route", "orders", "--target", "inv", "--received", list}, &out, &out); code != 0 {
		t.Fatalf("reconcile: exit %d\n%s", code, out.String())
	}

	// Audit: wait for the retention to expire the first part.
	t.Logf("waiting for the retention (1m) to expire the paused target's messages")
	wait := time.Minute + 20*time.Second - time.Since(started)
	if !waitFor(wait+20*time.Second, func() bool { return counts("audit", "arch")["expired"] == 60.0 }) {
		t.Fatalf("audit/arch after the retention: %v\nlogs:\n%s", counts("audit", "arch"), p.output())
	}
	var auditB []string
	for i := range 20 {
		auditB = append(auditB, fmt.Sprintf("audit-b-%d", i))
	}
	postAll("/api/audit", auditB, func(int) string { return "" }, &p, 0)
	if code, body := apiCall(t, "POST", admin+"/v1/routes/audit/targets/arch/resume", testToken, nil); code != 200 {
		t.Fatalf("resume: %d %v", code, body)
	}
	expect("audit", "arch", map[string]float64{"accepted": 80, "expired": 60, "delivered": 20, "pending": 0})
	// The expired ones are listed with their ids and keys.
	code, body = apiCall(t, "GET", admin+"/v1/routes/audit/messages?state=expired&limit=1000", testToken, nil)
	if code != 200 || len(body["messages"].([]any)) != 60 {
		t.Fatalf("expired list: %d %v", code, body)
	}
	for _, r := range body["messages"].([]any) {
		r := r.(map[string]any)
		k, _ := r["idempotency_key"].(string)
		if acked[k] != r["id"] || r["targets"].([]any)[0].(map[string]any)["expired_at"] == nil {
			t.Fatalf("an expired row: %v (acked as %s)", r, acked[k])
		}
	}
	// And a last kill: the counts survive it.
	p.kill(t)
	p = startSluice(t, policy, addr)
	expect("audit", "arch", map[string]float64{"accepted": 80, "expired": 60, "delivered": 20, "pending": 0})
	if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
}

// TestSpilloverForwardedSurvivesKill9: keyed requests forwarded at once by
// a spillover route are remembered across a SIGKILL right after their
// answers: every repeat after the restart gets its first id and is not
// forwarded again, and each counts as delivered once.
func TestSpilloverForwardedSurvivesKill9(t *testing.T) {
	down := &chaosDown{ok: map[string]int{}, tried: map[string]int{}}
	ds := httptest.NewServer(down)
	defer ds.Close()
	dir := t.TempDir()
	addr, adminAddr := freePort(t), freePort(t)
	admin := "http://" + adminAddr
	policy := filepath.Join(dir, "policy.yaml")
	writeFile(t, policy, fmt.Sprintf(`listen: %q
admin: { listen: %q, token: %q }
storage: { dir: %q, fsync: always }
routes:
  - name: sp
    mode: spillover
    match: { path: /api/sp }
    idempotency_header: Idempotency-Key
    targets:
      - { name: t, url: %q, rate: unlimited }
`, addr, adminAddr, testToken, filepath.Join(dir, "data"), ds.URL))
	p := startSluice(t, policy, addr)
	client := &http.Client{Timeout: 5 * time.Second}
	post := func(key string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+addr+"/api/sp", strings.NewReader(`{"k":"`+key+`"}`))
		req.Header.Set("Idempotency-Key", key)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	ids := map[string]string{}
	for i := range 50 {
		k := fmt.Sprintf("sp-%d", i)
		resp := post(k)
		if resp.StatusCode != 200 || resp.Header.Get("X-Sluice-Mode") != "forwarded" || resp.Header.Get("X-Sluice-Id") == "" {
			t.Fatalf("%s: %d %v", k, resp.StatusCode, resp.Header)
		}
		ids[k] = resp.Header.Get("X-Sluice-Id")
	}
	p.kill(t)
	p = startSluice(t, policy, addr)
	for k, id := range ids {
		resp := post(k)
		if resp.StatusCode != 202 || resp.Header.Get("X-Sluice-Id") != id || resp.Header.Get("X-Sluice-Duplicate") != "true" {
			t.Fatalf("a repeat of %s after SIGKILL: %d %v, want 202 with %s", k, resp.StatusCode, resp.Header, id)
		}
		if n := down.okCount(k); n != 1 {
			t.Fatalf("%s reached the downstream %d times", k, n)
		}
	}
	var c map[string]any
	if !waitFor(10*time.Second, func() bool {
		code, body := apiCall(t, "GET", admin+"/v1/routes/sp/counts", testToken, nil)
		if code != 200 {
			return false
		}
		c = body["targets"].([]any)[0].(map[string]any)
		return c["delivered"] == 50.0
	}) {
		t.Fatalf("counts after the restart: %v\n%s", c, p.output())
	}
	identity(t, c)
	if c["accepted"] != 50.0 {
		t.Fatalf("counts: %v", c)
	}
}
