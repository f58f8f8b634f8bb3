package proxy

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/store"
)

// policyServer runs a Server for the policy text on a loopback listener
// and returns its base URL.
func policyServer(t *testing.T, text string) (string, *Server) {
	t.Helper()
	return policyServerWith(t, text, nil)
}

// policyServerWith is policyServer with the Config changed by edit.
func policyServerWith(t *testing.T, text string, edit func(*Config)) (string, *Server) {
	t.Helper()
	addr, s := startPolicyWith(t, text, edit)
	return "http://" + addr, s
}

// fill appends n messages to the route's queue directly.
func fill(t *testing.T, q store.Queue, n int) {
	t.Helper()
	for i := range n {
		if _, err := q.Append(context.Background(), &buffer.Message{Method: "POST", URI: "/api/orders", Body: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

func etaOf(t *testing.T, targets []acceptedTarget, name string) (time.Time, bool) {
	t.Helper()
	for _, tg := range targets {
		if tg.Target == name {
			if tg.ETA == nil {
				return time.Time{}, false
			}
			return *tg.ETA, true
		}
	}
	t.Fatalf("no target %q in %+v", name, targets)
	return time.Time{}, false
}

func near(got, want time.Time, slack time.Duration) bool {
	d := got.Sub(want)
	return d > -slack && d < slack
}

const etaPolicy = `
routes:
  - name: orders
    match: { path: /api/orders }
    targets:
      - { name: fast, url: "http://127.0.0.1:1" }
      - { name: slow, url: "http://127.0.0.1:1", rate: 1/s }
      - { name: stopped, url: "http://127.0.0.1:1", rate: 0 }
`

// TestAcceptedETA: the 202 lists every target with its estimate: now for an
// unlimited one, the backlog at the rate for a slow one, none for a paused one.
func TestAcceptedETA(t *testing.T) {
	base, s := policyServer(t, etaPolicy)
	fill(t, s.testQueue("orders"), 30)
	now := time.Now()
	resp := do(t, "POST", base+"/api/orders", `{}`, nil)
	if resp.StatusCode() != 202 {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	var body acceptedBody
	if err := json.Unmarshal(resp.Body(), &body); err != nil || body.Status != "queued" || body.StatusURL != StatusPrefix+body.ID || len(body.Targets) != 3 {
		t.Fatalf("202 body %s: %v", resp.Body(), err)
	}
	if eta, ok := etaOf(t, body.Targets, "fast"); !ok || !near(eta, now, 2*time.Second) {
		t.Errorf("fast: eta %v %v, want now", eta, ok)
	}
	if eta, ok := etaOf(t, body.Targets, "slow"); !ok || !near(eta, now.Add(30*time.Second), 2*time.Second) {
		t.Errorf("slow: eta %v %v, want now+30s", eta, ok)
	}
	if _, ok := etaOf(t, body.Targets, "stopped"); ok || strings.Contains(string(resp.Body()), `"target":"stopped","eta"`) {
		t.Errorf("stopped: an eta in %s", resp.Body())
	}

	// The status API: the queued message has the backlog ahead of it (the
	// 30 before it) for the slow target.
	var ms messageStatus
	st := do(t, "GET", base+body.StatusURL, "", nil)
	if err := json.Unmarshal(st.Body(), &ms); err != nil || len(ms.Targets) != 3 {
		t.Fatalf("status %s: %v", st.Body(), err)
	}
	for _, ts := range ms.Targets {
		switch ts.Target {
		case "slow":
			if ts.ETA == nil || !near(*ts.ETA, now.Add(30*time.Second), 2*time.Second) {
				t.Errorf("status: slow eta %v, want now+30s", ts.ETA)
			}
		case "stopped":
			if ts.ETA != nil {
				t.Errorf("status: stopped eta %v, want none", ts.ETA)
			}
		}
	}

	// A retrying message goes at its next try.
	c, _ := s.testQueue("orders").Consumer("fast")
	ds, err := c.Fetch(1, time.Now())
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetch: %v %v", ds, err)
	}
	next := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := c.Complete(context.Background(), ds[0], buffer.Outcome{Phase: buffer.Retrying, NextTry: next, Attempt: buffer.Attempt{At: time.Now(), Status: 503}}); err != nil {
		t.Fatal(err)
	}
	st = do(t, "GET", base+StatusPrefix+ds[0].ID.String(), "", nil)
	ms = messageStatus{}
	json.Unmarshal(st.Body(), &ms)
	if ts := ms.Targets[0]; ts.Status != buffer.Retrying || ts.ETA == nil || !ts.ETA.Equal(next) {
		t.Errorf("retrying: %+v, want eta = next_try %v", ts, next)
	}
}

// fakeEstimator stands in for a drainer.
type fakeEstimator struct{ d time.Duration }

func (f fakeEstimator) ETA(now time.Time, backlog uint64) (time.Time, bool) {
	return now.Add(f.d * time.Duration(backlog)), f.d >= 0
}

// TestMaxWait: a new request whose estimate is later than max_wait is
// refused 503 backlog_too_long with Retry-After and the target and eta named,
// and nothing is stored.
func TestMaxWait(t *testing.T) {
	base, s := policyServer(t, `
routes:
  - name: orders
    match: { path: /api/orders }
    max_wait: 1h
    targets:
      - { name: slow, url: "http://127.0.0.1:1", rate: 1/m }
  - name: paused
    match: { path: /api/paused }
    mode: spillover
    max_wait: 6h
    targets:
      - { name: stopped, url: "http://127.0.0.1:1", rate: 0 }
  - name: wired
    match: { path: /api/wired }
    max_wait: 10m
    targets:
      - { name: a, url: "http://127.0.0.1:1" }
`)
	q := s.testQueue("orders")
	fill(t, q, 50) // 50 minutes ahead at 1/m: still accepted
	if resp := do(t, "POST", base+"/api/orders", `{}`, nil); resp.StatusCode() != 202 {
		t.Fatalf("within max_wait: %d %s", resp.StatusCode(), resp.Body())
	}
	fill(t, q, 49) // now 100 ahead: 100 minutes, 40 more than max_wait
	before := q.Stats().Appended
	now := time.Now()
	resp := do(t, "POST", base+"/api/orders", `{}`, nil)
	var eb errorBody
	if err := json.Unmarshal(resp.Body(), &eb); err != nil || resp.StatusCode() != 503 || eb.Error.Code != "backlog_too_long" ||
		eb.Error.Target != "slow" || eb.Error.ETA == nil || !near(*eb.Error.ETA, now.Add(100*time.Minute), 3*time.Second) {
		t.Fatalf("slow: %d %s: %v", resp.StatusCode(), resp.Body(), err)
	}
	if ra, _ := strconv.Atoi(string(resp.Header.Peek("Retry-After"))); ra < 40*60-3 || ra > 40*60+3 {
		t.Errorf("Retry-After %q, want about 2400 (40 minutes)", resp.Header.Peek("Retry-After"))
	}
	if got := q.Stats().Appended; got != before {
		t.Errorf("%d messages stored by a refused request", got-before)
	}

	// Paused with no end: refused at once, Retry-After 1h, no eta.
	resp = do(t, "POST", base+"/api/paused", `{}`, nil)
	eb = errorBody{}
	json.Unmarshal(resp.Body(), &eb)
	if resp.StatusCode() != 503 || eb.Error.Code != "backlog_too_long" || eb.Error.Target != "stopped" || eb.Error.ETA != nil ||
		string(resp.Header.Peek("Retry-After")) != "3600" {
		t.Fatalf("paused: %d %s Retry-After %q", resp.StatusCode(), resp.Body(), resp.Header.Peek("Retry-After"))
	}
	if got := s.testQueue("paused").Stats().Appended; got != 0 {
		t.Errorf("paused: %d stored", got)
	}

	// An estimator set by SetEstimator (a drainer) is used: 1 minute per
	// message ahead; 11 ahead is past 10m, by a minute.
	if err := s.SetEstimator("wired", "a", fakeEstimator{time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEstimator("wired", "nope", fakeEstimator{}); err == nil {
		t.Error("SetEstimator accepted an unknown target")
	}
	fill(t, s.testQueue("wired"), 11)
	resp = do(t, "POST", base+"/api/wired", `{}`, nil)
	if ra := string(resp.Header.Peek("Retry-After")); resp.StatusCode() != 503 || ra != "60" {
		t.Fatalf("wired: %d %s Retry-After %q, want 503 and 60", resp.StatusCode(), resp.Body(), ra)
	}
}

// TestCallbackAllowList: a callback URL outside callbacks.allow is refused
// 400 and nothing is stored; an allowed one is stored with the message.
func TestCallbackAllowList(t *testing.T) {
	base, s := policyServer(t, `
callbacks: { allow: ["http://127.0.0.1:9000/"] }
routes:
  - name: orders
    match: { path: /api/orders }
    callback_header: X-Sluice-Callback
    targets: [{ name: a, url: "http://127.0.0.1:1" }]
  - name: refunds
    match: { path: /api/refunds }
    mode: spillover
    callback_header: X-Sluice-Callback
    callbacks: { allow: ["https://hooks.example.com/refunds/"] }
    targets: [{ name: a, url: "http://127.0.0.1:1" }]
`)
	for _, c := range []struct{ path, url string }{
		{"/api/orders", "http://127.0.0.1:9001/"},
		{"/api/orders", "http://127.0.0.1:9000@evil.example/"},
		{"/api/orders", "https://hooks.example.com/refunds/x"}, // another route's list
		{"/api/refunds", "http://127.0.0.1:9000/x"},            // the top-level list does not apply
	} {
		resp := do(t, "POST", base+c.path, `{}`, map[string]string{"X-Sluice-Callback": c.url})
		if resp.StatusCode() != 400 || !strings.Contains(string(resp.Body()), `"callback_not_allowed"`) {
			t.Errorf("%s with %s: %d %s, want 400 callback_not_allowed", c.path, c.url, resp.StatusCode(), resp.Body())
		}
	}
	if a, b := s.testQueue("orders").Stats().Appended, s.testQueue("refunds").Stats().Appended; a != 0 || b != 0 {
		t.Fatalf("refused requests stored %d and %d messages", a, b)
	}
	resp := do(t, "POST", base+"/api/orders", `{}`, map[string]string{"X-Sluice-Callback": "http://127.0.0.1:9000/hook?t=1"})
	if resp.StatusCode() != 202 {
		t.Fatalf("allowed: %d %s", resp.StatusCode(), resp.Body())
	}
	id, _ := buffer.ParseID(string(resp.Header.Peek("X-Sluice-Id")))
	m, _, err := s.testQueue("orders").Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, h := range m.Header {
		found = found || strings.EqualFold(h.Name, "X-Sluice-Callback") && h.Value == "http://127.0.0.1:9000/hook?t=1"
	}
	if !found {
		t.Errorf("the callback URL is not stored: %+v", m.Header)
	}
	if resp := do(t, "POST", base+"/api/orders", `{}`, nil); resp.StatusCode() != 202 {
		t.Errorf("no callback: %d", resp.StatusCode())
	}
}

// TestStatusShowsCapturedResponse: a captured answer appears per target,
// the body as text when it is UTF-8 (a character cut at the limit trimmed),
// else base64, to a request with the admin token.
func TestStatusShowsCapturedResponse(t *testing.T) {
	const admin = "admin-token-0123456789"
	base, s := policyServerWith(t, `
routes:
  - name: orders
    match: { path: /api/orders }
    targets:
      - { name: a, url: "http://127.0.0.1:1", capture_response: {} }
`, func(c *Config) { c.AdminToken = admin })
	q := s.testQueue("orders")
	fill(t, q, 3)
	c, _ := q.Consumer("a")
	ds, err := c.Fetch(3, time.Now())
	if err != nil || len(ds) != 3 {
		t.Fatalf("fetch: %v %v", ds, err)
	}
	bodies := []struct {
		body      []byte
		truncated bool
	}{
		{[]byte(`{"order_no":"SO-1"}`), false},
		{[]byte{0xff, 0x00, 0x01}, false},
		{[]byte("caf\xc3"), true}, // "café" cut inside "é"
	}
	for i, d := range ds {
		r := &buffer.Response{Status: 201, Header: []buffer.Header{{Name: "Location", Value: "/orders/1"}, {Name: "Vary", Value: "a"}, {Name: "Vary", Value: "b"}},
			Body: bodies[i].body, Truncated: bodies[i].truncated}
		if err := c.Complete(context.Background(), d, buffer.Outcome{Phase: buffer.Delivered, Attempt: buffer.Attempt{At: time.Now(), Status: 201}, Response: r}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(d *buffer.Delivery) (map[string]any, string) {
		st := do(t, "GET", base+StatusPrefix+d.ID.String(), "", map[string]string{"Authorization": "Bearer " + admin})
		var v struct {
			Targets []struct {
				Response map[string]any `json:"response"`
				ETA      *string        `json:"eta"`
			} `json:"targets"`
		}
		if err := json.Unmarshal(st.Body(), &v); err != nil || len(v.Targets) != 1 || v.Targets[0].Response == nil || v.Targets[0].ETA != nil {
			t.Fatalf("status %s: %v", st.Body(), err)
		}
		return v.Targets[0].Response, string(st.Body())
	}
	r, raw := get(ds[0])
	h, _ := r["headers"].(map[string]any)
	if r["status"] != 201.0 || r["body"] != `{"order_no":"SO-1"}` || h["Location"] != "/orders/1" || h["Vary"] != "a, b" || r["truncated"] != nil {
		t.Errorf("text body: %s", raw)
	}
	if r, raw := get(ds[1]); r["body"] != nil || r["body_base64"] != "/wAB" {
		t.Errorf("binary body: %s", raw)
	}
	if r, raw := get(ds[2]); r["body"] != "caf" || r["truncated"] != true {
		t.Errorf("cut body: %s", raw)
	}
}
