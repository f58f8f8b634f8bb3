package drain

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

// TestCaptureResponse: a target with capture_response keeps the answer to
// the delivery (status, headers, body) with the state; Lookup returns it.
func TestCaptureResponse(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		ctx.SetStatusCode(201)
		ctx.Response.Header.Set("Location", "/orders/"+strings.TrimPrefix(h.uri, "/api/orders?x="))
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"order_no":"SO-` + strings.TrimPrefix(h.uri, "/api/orders?x=") + `","note":"0123456789"}`)
	})
	_, q, _ := newQueue(t, "a", "b", "c")
	msgs := appendN(t, q, 3, order)
	ta := testTarget("a", ds.url)
	ta.CaptureResponse = &policies.Capture{MaxBytes: 64 << 10}
	tb := testTarget("b", ds.url)
	tb.CaptureResponse = &policies.Capture{MaxBytes: 10}
	da, _ := startDrainer(t, Config{Target: ta}, consumer(t, q, "a"))
	db, _ := startDrainer(t, Config{Target: tb}, consumer(t, q, "b"))
	dc, _ := startDrainer(t, Config{Target: testTarget("c", ds.url)}, consumer(t, q, "c"))
	waitFor(t, 10*time.Second, "deliveries", func() bool {
		return da.Stats().Delivered == 3 && db.Stats().Delivered == 3 && dc.Stats().Delivered == 3
	})
	for i, m := range msgs {
		n := string(rune('0' + i))
		st := status(t, q, m.ID, "a")
		r := st.Response
		if st.Phase != buffer.Delivered || r == nil {
			t.Fatalf("%s: a: state %+v", m.ID, st.State)
		}
		loc := ""
		for _, h := range r.Header {
			if h.Name == "Location" {
				loc = h.Value
			}
			if strings.EqualFold(h.Name, "Connection") {
				t.Errorf("%s: hop-by-hop header kept: %+v", m.ID, h)
			}
		}
		if r.Status != 201 || loc != "/orders/"+n || string(r.Body) != `{"order_no":"SO-`+n+`","note":"0123456789"}` || r.Truncated {
			t.Errorf("%s: a: response %+v (location %q)", m.ID, r, loc)
		}
		if r := status(t, q, m.ID, "b").Response; r == nil || string(r.Body) != `{"order_no` || !r.Truncated || r.Status != 201 {
			t.Errorf("%s: b: response %+v, want the body cut at 10 bytes", m.ID, r)
		}
		if r := status(t, q, m.ID, "c").Response; r != nil {
			t.Errorf("%s: c: response %+v kept without capture_response", m.ID, r)
		}
	}
}

// TestCaptureHeaders: hop-by-hop headers, and those named in Connection, are
// not kept.
func TestCaptureHeaders(t *testing.T) {
	var resp fasthttp.Response
	resp.SetStatusCode(200)
	resp.Header.Set("Keep-Alive", "timeout=5")
	resp.Header.Set("Upgrade", "h2c")
	resp.Header.Set("X-Order", "42")
	got := capture(&resp, []byte("hello"), false)
	for _, h := range got.Header {
		if h.Name == "Keep-Alive" || h.Name == "Upgrade" {
			t.Errorf("kept %+v", h)
		}
	}
	if got.Status != 200 || string(got.Body) != "hello" || got.Truncated || !hasHeader(got.Header, "X-Order", "42") {
		t.Errorf("capture = %+v", got)
	}
	if got := capture(&resp, []byte("hel"), true); !got.Truncated || string(got.Body) != "hel" {
		t.Errorf("a body cut at max_bytes: %+v, want Truncated", got)
	}
}

func hasHeader(hs []buffer.Header, name, value string) bool {
	for _, h := range hs {
		if h.Name == name && h.Value == value {
			return true
		}
	}
	return false
}

// hookServer records delivery callbacks; fail, if set, answers an event with
// a status (0 = 204).
type hookServer struct {
	url  string
	fail func(ev CallbackEvent, n int) int

	mu     sync.Mutex
	events []CallbackEvent
	tries  map[string]int // per id+target
	uris   []string
}

func newHookServer(t *testing.T, fail func(ev CallbackEvent, n int) int) *hookServer {
	t.Helper()
	hs := &hookServer{fail: fail, tries: map[string]int{}}
	hs.url = "http://" + testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		var ev CallbackEvent
		if err := json.Unmarshal(ctx.PostBody(), &ev); err != nil || string(ctx.Method()) != "POST" {
			t.Errorf("callback: %s %q: %v", ctx.Method(), ctx.PostBody(), err)
		}
		hs.mu.Lock()
		hs.tries[ev.ID+"/"+ev.Target]++
		n := hs.tries[ev.ID+"/"+ev.Target]
		hs.mu.Unlock()
		code := 204
		if hs.fail != nil {
			if c := hs.fail(ev, n); c != 0 {
				code = c
			}
		}
		ctx.SetStatusCode(code)
		if code < 300 {
			hs.mu.Lock()
			hs.events = append(hs.events, ev)
			hs.uris = append(hs.uris, string(ctx.RequestURI()))
			hs.mu.Unlock()
		}
	}})
	return hs
}

func (hs *hookServer) got() []CallbackEvent {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]CallbackEvent(nil), hs.events...)
}

// TestCallbacks: a message that names an allowed callback URL reports its
// final outcome for the target there (delivered or dead), after retries of a
// failing callback; the callback header is never sent to the target; Run
// waits for callbacks under way.
func TestCallbacks(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if strings.HasSuffix(h.uri, "x=1") {
			ctx.SetStatusCode(400) // dead at once
			return
		}
		ctx.SetStatusCode(201)
	})
	hooks := newHookServer(t, func(ev CallbackEvent, n int) int {
		if ev.Status == "delivered" && n == 1 {
			return 503 // the first try of each delivered callback fails
		}
		return 0
	})
	_, q, _ := newQueue(t, "a")
	const header = "X-Sluice-Callback"
	msgs := appendN(t, q, 4, func(i int) *buffer.Message {
		m := order(i)
		switch i {
		case 0, 1:
			m.Header = append(m.Header, buffer.Header{Name: "x-sluice-callback", Value: hooks.url + "/hook/" + string(rune('0'+i)) + "?token=s3cret"})
		case 2: // allowed at ingest once, not by the policy now
			m.Header = append(m.Header, buffer.Header{Name: header, Value: "http://127.0.0.1:1/elsewhere"})
		}
		return m // 3: no callback
	})
	allow := &policies.Callbacks{Allow: []string{hooks.url + "/hook/"}}
	d, stop := startDrainer(t, Config{Target: testTarget("a", ds.url), CallbackHeader: header, Callbacks: allow}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "outcomes", func() bool { st := d.Stats(); return st.Delivered == 3 && st.Dead == 1 })
	// Stop at once: the delivered callbacks are waiting for their second try.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	evs := hooks.got()
	if len(evs) != 2 {
		t.Fatalf("callbacks received after Run returned: %+v, want 2", evs)
	}
	byID := map[string]CallbackEvent{}
	for _, ev := range evs {
		byID[ev.ID] = ev
	}
	d0, d1 := byID[msgs[0].ID.String()], byID[msgs[1].ID.String()]
	if d0.Route != "orders" || d0.Target != "a" || d0.Status != "delivered" || d0.StatusCode != 201 || d0.Attempts != 1 || d0.At.IsZero() || d0.Error != "" {
		t.Errorf("delivered callback %+v", d0)
	}
	if d1.Status != "dead" || d1.StatusCode != 400 || d1.Attempts != 1 || d1.Error != "status 400" {
		t.Errorf("dead callback %+v", d1)
	}
	hooks.mu.Lock()
	if n := hooks.tries[d0.ID+"/a"]; n != 2 {
		t.Errorf("delivered callback tried %d times, want 2 (one 503, then 204)", n)
	}
	for _, u := range hooks.uris {
		if !strings.HasPrefix(u, "/hook/") || !strings.HasSuffix(u, "?token=s3cret") {
			t.Errorf("callback URI %q", u)
		}
	}
	hooks.mu.Unlock()
	if st := d.Stats(); st.CallbacksSent != 2 || st.CallbacksFailed != 1 {
		t.Errorf("stats: sent %d failed %d, want 2 and 1 (the URL not allowed)", st.CallbacksSent, st.CallbacksFailed)
	}
	for _, h := range ds.snapshot() {
		if _, ok := h.get(header); ok {
			t.Errorf("the target got the callback header: %+v", h.header)
		}
		if _, ok := h.get("x-sluice-callback"); ok {
			t.Errorf("the target got the callback header: %+v", h.header)
		}
	}
}

func TestNewCallbackNeedsAllowList(t *testing.T) {
	_, q, _ := newQueue(t, "a")
	if _, err := New(Config{Route: "orders", Target: testTarget("a", "http://127.0.0.1:1"), CallbackHeader: "X-Cb"}, consumer(t, q, "a")); err == nil {
		t.Fatal("New accepted a callback header without an allow-list")
	}
}

// TestDrainerETA: the estimate follows SetRate, and Pause makes it unknown.
func TestDrainerETA(t *testing.T) {
	_, q, _ := newQueue(t, "a")
	tg := testTarget("a", "http://127.0.0.1:1")
	tg.Rate = policies.Rate{PerSecond: 10}
	d, err := New(Config{Route: "orders", Target: tg, Logger: quietLogger()}, consumer(t, q, "a"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 3, 3, 12, 0, 0, 0, time.UTC)
	if eta, ok := d.ETA(now, 600); !ok || !eta.Equal(now.Add(time.Minute)) {
		t.Errorf("ETA = %v %v, want +1m", eta, ok)
	}
	d.SetRate(policies.Rate{PerSecond: 1})
	if eta, ok := d.ETA(now, 600); !ok || !eta.Equal(now.Add(10*time.Minute)) {
		t.Errorf("after SetRate(1/s): ETA = %v %v, want +10m", eta, ok)
	}
	d.Pause()
	if eta, ok := d.ETA(now, 0); ok {
		t.Errorf("paused: ETA = %v, want unknown", eta)
	}
	d.Resume()
	d.SetRate(unlimited)
	if eta, ok := d.ETA(now, 1e9); !ok || !eta.Equal(now) {
		t.Errorf("unlimited: ETA = %v %v, want now", eta, ok)
	}
}
