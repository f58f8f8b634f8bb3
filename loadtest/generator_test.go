package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// acker plays sluice's public listener: it answers 202 with a fresh
// X-Sluice-Id after latency, and remembers what it was sent.
type acker struct {
	URL     string
	latency time.Duration
	// forward, if set, is called with each accepted id and request, as
	// sluice's drainer would later.
	forward func(id string, req *fasthttp.Request)

	seq         atomic.Int64
	inflight    atomic.Int64
	maxInflight atomic.Int64

	mu      sync.Mutex
	headers []map[string]string
	bodies  [][]byte
}

func startAcker(t *testing.T, a *acker) *acker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: a.handle, IdleTimeout: time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Shutdown()
		<-served
	})
	a.URL = "http://" + ln.Addr().String() + "/api/orders"
	return a
}

func (a *acker) handle(ctx *fasthttp.RequestCtx) {
	n := a.inflight.Add(1)
	defer a.inflight.Add(-1)
	for m := a.maxInflight.Load(); n > m && !a.maxInflight.CompareAndSwap(m, n); m = a.maxInflight.Load() {
	}
	h := map[string]string{}
	for k, v := range ctx.Request.Header.All() {
		h[string(k)] = string(v)
	}
	a.mu.Lock()
	a.headers = append(a.headers, h)
	a.bodies = append(a.bodies, append([]byte(nil), ctx.PostBody()...))
	a.mu.Unlock()
	time.Sleep(a.latency)

	id := fmt.Sprintf("msg-%06d", a.seq.Add(1))
	if a.forward != nil {
		a.forward(id, &ctx.Request)
	}
	ctx.Response.Header.Set("X-Sluice-Id", id)
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	ctx.SetBodyString(`{"id":"` + id + `","status":"queued"}`)
}

func (a *acker) received() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.bodies)
}

func (a *acker) requests() ([]map[string]string, [][]byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.headers, a.bodies
}

func TestGenerateConstant(t *testing.T) {
	a := startAcker(t, &acker{})
	rec := NewRecorder()
	start := time.Now()
	err := Generate(context.Background(), GenConfig{
		URL:      a.URL,
		Pacer:    ConstantPacer{PerSecond: 500},
		Duration: time.Second,
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second || d > 3*time.Second {
		t.Errorf("a 1s run took %v", d)
	}
	s := rec.Snapshot()
	// The schedule is exact; what got through depends on the machine.
	if s.Offered != 500 {
		t.Errorf("Offered = %d, want 500 (the schedule)", s.Offered)
	}
	if n := a.received(); n < 350 || n > 650 {
		t.Errorf("server received %d, want about 500", n)
	}
	if s.Sent+s.Dropped != s.Offered || s.Accepted != s.Sent || s.Errors != 0 {
		t.Errorf("Offered %d Sent %d Dropped %d Accepted %d Errors %d", s.Offered, s.Sent, s.Dropped, s.Accepted, s.Errors)
	}
	if s.IDs != int(s.Accepted) || len(rec.AcceptedIDs()) != s.IDs || len(rec.Accepted()) != s.IDs {
		t.Errorf("IDs %d, AcceptedIDs %d, Accepted %d; want %d", s.IDs, len(rec.AcceptedIDs()), len(rec.Accepted()), s.Accepted)
	}
	if s.Codes[202] != s.Accepted {
		t.Errorf("Codes = %v", s.Codes)
	}
	if s.AckLatency.Count != int(s.Accepted) || s.AckLatency.P50 <= 0 || s.AckLatency.Max < s.AckLatency.P99 {
		t.Errorf("AckLatency = %+v", s.AckLatency)
	}
	if rec.Histogram().TotalCount() != int64(s.Accepted) {
		t.Errorf("histogram holds %d values", rec.Histogram().TotalCount())
	}
	if s.OfferedSeries.Total() != 500 || s.AcceptedSeries.Total() != int(s.Accepted) {
		t.Errorf("series totals %d, %d", s.OfferedSeries.Total(), s.AcceptedSeries.Total())
	}
	if r := s.OfferedRate(); r < 350 || r > 650 {
		t.Errorf("OfferedRate = %.1f", r)
	}
}

// With every worker busy, due sends are dropped and counted, not queued.
func TestGenerateSaturated(t *testing.T) {
	a := startAcker(t, &acker{latency: 100 * time.Millisecond})
	rec := NewRecorder()
	err := Generate(context.Background(), GenConfig{
		URL:      a.URL,
		Pacer:    ConstantPacer{PerSecond: 100},
		Duration: 300 * time.Millisecond,
		Workers:  2,
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	s := rec.Snapshot()
	if s.Offered != 30 || s.Sent+s.Dropped != 30 || s.Dropped == 0 {
		t.Errorf("Offered %d Sent %d Dropped %d; want 30 offered, some dropped", s.Offered, s.Sent, s.Dropped)
	}
	if s.Sent > 10 {
		t.Errorf("Sent %d with 2 workers and 100ms answers in 0.3s", s.Sent)
	}
	if m := a.maxInflight.Load(); m > 2 {
		t.Errorf("%d requests in flight, Workers is 2", m)
	}
}

func TestGenerateRequests(t *testing.T) {
	a := startAcker(t, &acker{})
	rec := NewRecorder()
	err := Generate(context.Background(), GenConfig{
		URL:             a.URL,
		Pacer:           ConstantPacer{PerSecond: 1000},
		MaxRequests:     20,
		IdempotencyKeys: true,
		RunID:           "r1",
		Header:          map[string]string{"X-Test": "yes"},
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if s := rec.Snapshot(); s.Offered != 20 || s.Accepted != 20 {
		t.Fatalf("Offered %d Accepted %d, want 20 20", s.Offered, s.Accepted)
	}
	keys := map[string]bool{}
	headers, bodies := a.requests()
	for i, h := range headers {
		keys[h["Idempotency-Key"]] = true
		if h["X-Test"] != "yes" || h["Content-Type"] != "application/json" {
			t.Errorf("headers %v", h)
		}
		var order struct{ Seq uint64 }
		if err := json.Unmarshal(bodies[i], &order); err != nil || order.Seq == 0 {
			t.Errorf("body %q: %v", bodies[i], err)
		}
		if n := len(bodies[i]); n < 900 || n > 1100 {
			t.Errorf("body of %d bytes, want about 1 KiB", n)
		}
	}
	for i := 1; i <= 20; i++ {
		if k := fmt.Sprintf("lt-r1-%d", i); !keys[k] {
			t.Errorf("no request with Idempotency-Key %s", k)
		}
	}
}

func TestGenerateCancel(t *testing.T) {
	a := startAcker(t, &acker{})
	rec := NewRecorder()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := Generate(ctx, GenConfig{URL: a.URL, Pacer: ConstantPacer{PerSecond: 100}, Duration: time.Minute}, rec)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancelled run took %v", d)
	}
	if s := rec.Snapshot(); s.Offered == 0 || s.Offered > 50 || !s.Stopped.After(s.Started) {
		t.Errorf("Offered %d Started %v Stopped %v", s.Offered, s.Started, s.Stopped)
	}
}

func TestGenerateConnectionErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/"
	ln.Close() // nothing listens there now
	rec := NewRecorder()
	err = Generate(context.Background(), GenConfig{
		URL: url, Pacer: ConstantPacer{PerSecond: 100}, MaxRequests: 5, Timeout: time.Second,
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	s := rec.Snapshot()
	if s.Errors != 5 || s.Accepted != 0 || len(s.ErrorKinds) == 0 {
		t.Errorf("Errors %d Accepted %d ErrorKinds %v", s.Errors, s.Accepted, s.ErrorKinds)
	}
}

func TestGenConfigValidate(t *testing.T) {
	ok := GenConfig{URL: "http://127.0.0.1:8080/api/orders", Pacer: ConstantPacer{PerSecond: 1}, Duration: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*GenConfig){
		"no scheme":      func(c *GenConfig) { c.URL = "127.0.0.1:8080" },
		"ftp":            func(c *GenConfig) { c.URL = "ftp://127.0.0.1/" },
		"no pacer":       func(c *GenConfig) { c.Pacer = nil },
		"endless":        func(c *GenConfig) { c.Duration = 0 },
		"negative time":  func(c *GenConfig) { c.Duration = -1 },
		"negative work":  func(c *GenConfig) { c.Workers = -1 },
		"negative limit": func(c *GenConfig) { c.Timeout = -1 },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
		if err := Generate(context.Background(), c, NewRecorder()); err == nil {
			t.Errorf("%s: Generate ran", name)
		}
	}
	// Every problem is reported at once.
	err := GenConfig{}.Validate()
	for _, want := range []string{"URL", "Pacer", "Duration"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("GenConfig{}.Validate() = %v, want it to name %s", err, want)
		}
	}
}

func TestOrderBody(t *testing.T) {
	b := OrderBody(42)
	var order map[string]any
	if err := json.Unmarshal(b, &order); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if len(b) != 1024 || order["seq"] != 42.0 {
		t.Errorf("len %d seq %v, want 1024 and 42", len(b), order["seq"])
	}
}
