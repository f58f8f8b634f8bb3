package proxy

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/policies"
)

// TestSetRoutes swaps the routes under a steady client: no request is
// refused for the swap; a new route accepts at once; a removed buffer route
// answers 404 and its stored messages keep their status.
func TestSetRoutes(t *testing.T) {
	policy := func(extra string) *policies.Policy {
		pol, err := policies.Parse("test.yaml", fmt.Appendf(nil, `
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    targets:
      - { name: inv, url: "http://127.0.0.1:1" }
%s`, extra))
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	audit := `  - name: audit
    match: { path: /api/audit }
    targets:
      - { name: log, url: "http://127.0.0.1:1" }
`
	st := buftest.Open(t, buffer.Config{})
	s, err := New(Config{Policy: policy(""), Queues: buftest.Queues(t, st, policy(""))})
	must(t, err)
	base := "http://" + listen(t, s)
	swap := func(extra string) {
		t.Helper()
		pol := policy(extra)
		must(t, s.SetRoutes(pol, buftest.Queues(t, st, pol)))
	}

	resp := do(t, "POST", base+"/api/orders", `{}`, nil)
	if resp.StatusCode() != 202 {
		t.Fatalf("POST: %d", resp.StatusCode())
	}
	oldID := string(resp.Header.Peek("X-Sluice-Id"))

	var refused atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// The orders route is in every policy below.
			req, r := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.Header.SetMethod("POST")
			req.SetRequestURI(base + "/api/orders")
			if err := fasthttp.DoTimeout(req, r, 5*time.Second); err != nil || r.StatusCode() != 202 {
				refused.Add(1)
			}
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(r)
		}
	})
	for range 20 {
		swap(audit)
		swap("")
	}
	swap(audit)
	resp = do(t, "POST", base+"/api/audit", `{}`, nil)
	if resp.StatusCode() != 202 {
		t.Fatalf("new route: %d %s", resp.StatusCode(), resp.Body())
	}
	auditID := string(resp.Header.Peek("X-Sluice-Id"))
	swap("")
	close(stop)
	wg.Wait()
	if n := refused.Load(); n > 0 {
		t.Fatalf("%d requests refused during 41 swaps", n)
	}
	if resp = do(t, "POST", base+"/api/audit", `{}`, nil); resp.StatusCode() != 404 {
		t.Errorf("removed route: %d, want 404", resp.StatusCode())
	}
	for _, id := range []string{oldID, auditID} {
		st := do(t, "GET", base+StatusPrefix+id, "", nil)
		var ms messageStatus
		if st.StatusCode() != 200 || json.Unmarshal(st.Body(), &ms) != nil {
			t.Errorf("status of %s after the swaps: %d %s", id, st.StatusCode(), st.Body())
		}
	}
	if rt := s.table.Load().retired; len(rt) != 1 || rt[0].Name != "audit" {
		t.Errorf("retired routes: %v", rt)
	}
}

type observed struct {
	mu   sync.Mutex
	seen []string
}

func (o *observed) Observe(route string, status int, code string, elapsed time.Duration) {
	o.mu.Lock()
	o.seen = append(o.seen, fmt.Sprintf("%s %d %s", route, status, code))
	o.mu.Unlock()
}

// TestObserver: the Observer hears of accepted and refused requests of a
// buffer route, with the refusal's code (also for refusals written with
// writeJSON, such as backlog_too_long).
func TestObserver(t *testing.T) {
	o := &observed{}
	s, _ := newTestServer(t, `
routes:
  - name: orders
    match: { path: /api/orders }
    max_body: 1KiB
    targets:
      - { name: inv, url: "http://127.0.0.1:1" }
  - name: slow
    match: { path: /api/slow }
    max_wait: 1s
    targets:
      - { name: inv, url: "http://127.0.0.1:1", rate: 0 }
`, buffer.Config{}, func(c *Config) { c.Observer = o })
	h := s.Handler()
	var callPath func(path, body string)
	call := func(body string) { callPath("/api/orders", body) }
	callPath = func(path, body string) {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI(path)
		ctx.Request.SetBodyString(body)
		h(&ctx)
	}
	call(`{}`)
	for range 5 { // over max_body
		call(string(make([]byte, 2048)))
	}
	callPath("/api/slow", "{}")
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.seen) != 7 || o.seen[0] != "orders 202 " || o.seen[5] != "orders 413 body_too_large" || o.seen[6] != "slow 503 backlog_too_long" {
		t.Errorf("observed %q", o.seen)
	}
}
