package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/internal/hop"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// newTestServer parses the policy text and makes a Server of it over a
// store opened with storeCfg (in a temporary directory unless Dir is set),
// its queues opened as cmd/sluice opens them. edit, if not nil, changes the
// Server's Config first. The store is closed when the test ends.
func newTestServer(tb testing.TB, text string, storeCfg buffer.Config, edit func(*Config)) (*Server, *buffer.Store) {
	tb.Helper()
	pol, err := policies.Parse("test.yaml", []byte(text))
	must(tb, err)
	st := buftest.Open(tb, storeCfg)
	cfg := Config{Policy: pol, Queues: buftest.Queues(tb, st, pol)}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	must(tb, err)
	return s, st
}

// listen serves s on a loopback listener until the test ends and returns
// its address (host:port).
func listen(tb testing.TB, s *Server) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(tb, err)
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	tb.Cleanup(func() { s.Shutdown(context.Background()); <-done })
	return ln.Addr().String()
}

// testQueue returns the buffer queue of a route.
func (s *Server) testQueue(route string) *buffer.Queue {
	for _, r := range s.routes() {
		if r.Name == route {
			q, _ := r.queue.(*buffer.Queue)
			return q
		}
	}
	return nil
}

func TestPathMatches(t *testing.T) {
	for _, c := range []struct {
		prefix, path string
		want         bool
	}{
		{"/api/orders", "/api/orders", true},
		{"/api/orders", "/api/orders/7", true},
		{"/api/orders", "/api/ordersX", false},
		{"/api/orders", "/api", false},
		{"/api/", "/api/anything/below", true},
		{"/api/", "/api", false},
		{"/", "/x", true},
	} {
		if got := pathMatches(c.prefix, []byte(c.path)); got != c.want {
			t.Errorf("pathMatches(%q, %q) = %v, want %v", c.prefix, c.path, got, c.want)
		}
	}
}

func TestPathOf(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b?c=d":                  "/a/b",
		"/a#frag":                   "/a",
		"http://evil.example/x?y":   "/x",
		"http://evil.example":       "/",
		"https://h:8443/api/orders": "/api/orders",
	} {
		if got := string(pathOf([]byte(in))); got != want {
			t.Errorf("pathOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJoinPath(t *testing.T) {
	for _, c := range [][3]string{
		{"", "/a?x=1", "/a?x=1"},
		{"/", "/a", "/a"},
		{"/base", "/a", "/base/a"},
		{"/base/", "/a", "/base/a"},
		{"/base", "a", "/base/a"},
	} {
		if got := joinPath(c[0], c[1]); got != c[2] {
			t.Errorf("joinPath(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

func TestStoredHeadersDropHopByHop(t *testing.T) {
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/api/orders")
	req.Header.Set("Connection", "keep-alive, X-Secret-Hop")
	req.Header.Set("X-Secret-Hop", "1")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic x")
	req.Header.Set("Upgrade", "h2c")
	req.Header.Set("X-Forwarded-For", "10.0.0.1")
	req.Header.Set("X-Customer-Id", "c-1")
	req.Header.SetHost("shop.example")
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 5555}, nil)
	got := map[string]string{}
	for _, h := range storedHeaders(&ctx) {
		got[h.Name] = h.Value
	}
	for _, bad := range []string{"Connection", "X-Secret-Hop", "Keep-Alive", "Proxy-Authorization", "Upgrade", "Host", "Content-Length"} {
		if _, ok := got[bad]; ok {
			t.Errorf("stored hop-by-hop or per-connection header %s", bad)
		}
	}
	if got["X-Customer-Id"] != "c-1" {
		t.Errorf("end-to-end header lost: %v", got)
	}
	if got["X-Forwarded-For"] != "10.0.0.1, 127.0.0.9" {
		t.Errorf("X-Forwarded-For = %q, want the client appended", got["X-Forwarded-For"])
	}
	if got["X-Forwarded-Host"] != "shop.example" || got["X-Forwarded-Proto"] != "http" {
		t.Errorf("forwarded headers: %v", got)
	}
}

// TestStoredKind: storedKind, which compares a name only with those of its
// length, drops exactly the hop-by-hop headers of hop.Names and the ones
// sluice sets, in any case.
func TestStoredKind(t *testing.T) {
	want := map[string]int{"Host": dropHeader, "Content-Length": dropHeader, "X-Forwarded-Proto": dropHeader,
		"X-Forwarded-Host": dropHeader, "X-Forwarded-For": forwardedFor,
		"Content-Type": keepHeader, "X-Customer-Id": keepHeader, "Hosts": keepHeader, "Tee": keepHeader, "": keepHeader}
	for _, h := range hop.Names {
		want[h] = dropHeader
	}
	for name, kind := range want {
		for _, n := range []string{name, strings.ToLower(name), strings.ToUpper(name)} {
			if got := storedKind([]byte(n)); got != kind {
				t.Errorf("storedKind(%q) = %d, want %d", n, got, kind)
			}
		}
	}
}

// testServer runs a Server on a real loopback listener with a policy of
// one buffer route and one passthrough route to upstream.
func testServer(t *testing.T, upstream string, storeCfg buffer.Config) (string, *Server) {
	t.Helper()
	s, _ := newTestServer(t, fmt.Sprintf(`
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    idempotency_header: Idempotency-Key
    max_body: 1KiB
    targets:
      - { name: inv, url: "http://127.0.0.1:1" }
  - name: catalog
    match: { path: /api/ }
    mode: passthrough
    upstream: %s
`, upstream), storeCfg, nil)
	return "http://" + listen(t, s), s
}

var must = testutil.Must

func do(t *testing.T, method, url, body string, hdr map[string]string) *fasthttp.Response {
	t.Helper()
	req := fasthttp.AcquireRequest()
	resp := &fasthttp.Response{}
	req.Header.SetMethod(method)
	req.SetRequestURI(url)
	req.SetBodyString(body)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp
}

func TestBufferAcceptAndStatus(t *testing.T) {
	base, s := testServer(t, "http://127.0.0.1:1", buffer.Config{})
	resp := do(t, "POST", base+"/api/orders?x=1", `{"a":1}`, map[string]string{"Idempotency-Key": "k-1", "Content-Type": "application/json"})
	if resp.StatusCode() != 202 {
		t.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
	}
	var body acceptedBody
	if err := json.Unmarshal(resp.Body(), &body); err != nil || body.Status != "queued" {
		t.Fatalf("202 body %s: %v", resp.Body(), err)
	}
	if string(resp.Header.Peek("X-Sluice-Id")) != body.ID || string(resp.Header.Peek("Location")) != body.StatusURL ||
		body.StatusURL != StatusPrefix+body.ID {
		t.Fatalf("headers/body disagree: %s / %s / %+v", resp.Header.Peek("X-Sluice-Id"), resp.Header.Peek("Location"), body)
	}
	// It is stored, with its idempotency key and query.
	id, _ := buffer.ParseID(body.ID)
	m, _, err := s.testQueue("orders").Lookup(id)
	if err != nil || m.IdempotencyKey != "k-1" || m.URI != "/api/orders?x=1" || string(m.Body) != `{"a":1}` {
		t.Fatalf("stored %+v, %v", m, err)
	}
	st := do(t, "GET", base+body.StatusURL, "", nil)
	var ms messageStatus
	if err := json.Unmarshal(st.Body(), &ms); err != nil || st.StatusCode() != 200 || ms.Route != "orders" ||
		len(ms.Targets) != 1 || ms.Targets[0].Status != buffer.Queued {
		t.Fatalf("status %d %s: %v", st.StatusCode(), st.Body(), err)
	}
}

func TestRefusalsAreJSONAndNeverAccepted(t *testing.T) {
	base, s := testServer(t, "http://127.0.0.1:1", buffer.Config{MaxBytes: 1})
	resp := do(t, "POST", base+"/api/orders", `{}`, nil)
	if resp.StatusCode() != 503 || len(resp.Header.Peek("Retry-After")) == 0 || !strings.Contains(string(resp.Body()), "storage_full") {
		t.Fatalf("full storage: %d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "POST", base+"/api/orders", strings.Repeat("x", 2048), nil)
	if resp.StatusCode() != 413 || !strings.Contains(string(resp.Body()), "body_too_large") {
		t.Fatalf("big body: %d %s", resp.StatusCode(), resp.Body())
	}
	if got := s.testQueue("orders").Stats().Appended; got != 0 {
		t.Fatalf("%d messages stored by refused requests", got)
	}
}

func TestPassthroughGoesOnlyToUpstream(t *testing.T) {
	up := testutil.StartUpstream(t, func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.Set("X-Up", "1")
		ctx.SetStatusCode(201)
		ctx.SetBodyString("made")
	})
	base, _ := testServer(t, up.URL+"/v2", buffer.Config{})

	resp := do(t, "GET", base+"/api/items?id=3", "", map[string]string{"Connection": "X-Hop", "X-Hop": "secret"})
	if resp.StatusCode() != 201 || string(resp.Body()) != "made" || string(resp.Header.Peek("X-Up")) != "1" {
		t.Fatalf("passthrough reply %d %s", resp.StatusCode(), resp.Body())
	}
	// An absolute URI naming another host still goes to the upstream.
	c, _ := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	fmt.Fprintf(c, "GET http://evil.example/api/items HTTP/1.1\r\nHost: evil.example\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "201") {
		t.Fatalf("absolute-URI request: %q", buf[:n])
	}
	var seen []string
	for _, r := range up.Requests() {
		seen = append(seen, r.Host+" "+r.URI+" xff="+r.Header.Get("X-Forwarded-For")+" conn-hop="+r.Header.Get("X-Hop"))
	}
	want := up.Addr
	if len(seen) != 2 {
		t.Fatalf("upstream saw %d requests: %v", len(seen), seen)
	}
	for _, s := range seen {
		if !strings.HasPrefix(s, want+" /v2/api/items") || strings.Contains(s, "evil") || strings.Contains(s, "secret") ||
			!strings.Contains(s, "xff=127.0.0.1") {
			t.Errorf("upstream saw %q", s)
		}
	}
}

// A repeated Idempotency-Key answers the first id with the message's state
// (queued, then delivered); the same key with another request is refused
// with 422 and stores nothing.
func TestIdempotencyKeyAnswersFirstID(t *testing.T) {
	base, s := testServer(t, "http://127.0.0.1:1", buffer.Config{})
	first := do(t, "POST", base+"/api/orders", `{"a":1}`, map[string]string{"Idempotency-Key": "o-7"})
	again := do(t, "POST", base+"/api/orders", `{"a":1}`, map[string]string{"Idempotency-Key": "o-7", "X-Retry": "1"})
	other := do(t, "POST", base+"/api/orders", `{"a":3}`, map[string]string{"Idempotency-Key": "o-8"})
	if first.StatusCode() != 202 || again.StatusCode() != 202 || other.StatusCode() != 202 {
		t.Fatalf("statuses %d %d %d", first.StatusCode(), again.StatusCode(), other.StatusCode())
	}
	// The same id and status URL; the estimates are made anew.
	var fb, ab acceptedBody
	must(t, json.Unmarshal(first.Body(), &fb))
	must(t, json.Unmarshal(again.Body(), &ab))
	if ab.ID == "" || ab.ID != fb.ID || ab.StatusURL != fb.StatusURL || len(ab.Targets) != 1 || string(again.Header.Peek("X-Sluice-Duplicate")) != "true" {
		t.Fatalf("repeat: %s dup=%q; first: %s", again.Body(), again.Header.Peek("X-Sluice-Duplicate"), first.Body())
	}
	if fb.Status != "queued" || fb.Targets[0].Status != "" || ab.Status != "queued" || ab.Targets[0].Status != store.Queued {
		t.Fatalf("statuses: first %s, repeat %s; want queued, with the target's status in the repeat", first.Body(), again.Body())
	}
	if len(first.Header.Peek("X-Sluice-Duplicate")) != 0 || string(other.Body()) == string(first.Body()) {
		t.Fatalf("first or other key marked duplicate")
	}

	// The same key for another request: 422, nothing stored, neither the
	// key nor the body echoed.
	for _, c := range []struct{ uri, body string }{{"/api/orders", `{"a":2}`}, {"/api/orders?x=1", `{"a":1}`}} {
		r := do(t, "POST", base+c.uri, c.body, map[string]string{"Idempotency-Key": "o-7"})
		var eb errorBody
		if err := json.Unmarshal(r.Body(), &eb); err != nil || r.StatusCode() != 422 || eb.Error.Code != "idempotency_key_reused" ||
			!strings.Contains(eb.Error.Message, "Idempotency-Key") || strings.Contains(string(r.Body()), "o-7") || strings.Contains(string(r.Body()), `"a"`) {
			t.Fatalf("%s %s with a used key: %d %s (%v)", c.uri, c.body, r.StatusCode(), r.Body(), err)
		}
		if len(r.Header.Peek("X-Sluice-Id")) != 0 || len(r.Header.Peek("X-Sluice-Duplicate")) != 0 {
			t.Fatalf("a refused request got an id: %s", r.Header.String())
		}
	}
	q := s.testQueue("orders")
	if got := q.Stats().Appended; got != 2 {
		t.Fatalf("stored %d, want 2", got)
	}

	// Once delivered, a repeat says so.
	c, _ := q.Consumer("inv")
	ds, err := c.Fetch(10, time.Now())
	if err != nil || len(ds) != 2 {
		t.Fatalf("fetch: %d %v", len(ds), err)
	}
	for _, d := range ds {
		must(t, c.Complete(context.Background(), d, buffer.Outcome{Phase: buffer.Delivered, Attempt: buffer.Attempt{At: time.Now(), Status: 201}}))
	}
	late := do(t, "POST", base+"/api/orders", `{"a":1}`, map[string]string{"Idempotency-Key": "o-7"})
	var lb acceptedBody
	must(t, json.Unmarshal(late.Body(), &lb))
	if late.StatusCode() != 202 || lb.ID != fb.ID || lb.Status != "delivered" || len(lb.Targets) != 1 || lb.Targets[0].Status != store.Delivered || lb.Targets[0].ETA != nil {
		t.Fatalf("repeat after delivery: %d %s", late.StatusCode(), late.Body())
	}
}

func TestRepeatStatus(t *testing.T) {
	e := func(ps ...store.Phase) []targetETA {
		var out []targetETA
		for _, p := range ps {
			out = append(out, targetETA{name: "t", phase: p})
		}
		return out
	}
	for _, c := range []struct {
		etas []targetETA
		want string
	}{
		{e(store.Queued), "queued"},
		{e(store.Delivered, store.Delivered), "delivered"},
		{e(store.Retrying, store.Retrying), "retrying"},
		{e(store.Delivered, store.Queued), "in_progress"},
		{e(store.Dead, store.InFlight), "in_progress"},
		{e(store.Delivered, store.Dead), "dead"},
		{e(store.Delivered, store.Purged), "dead"}, // a purged dead letter is finished
		{e(store.Purged), "purged"},
		{e(store.Delivered, ""), "unknown"}, // the lookup failed
		{nil, "unknown"},
	} {
		if got := repeatStatus(c.etas); got != c.want {
			t.Errorf("repeatStatus(%v) = %q, want %q", c.etas, got, c.want)
		}
	}
}
