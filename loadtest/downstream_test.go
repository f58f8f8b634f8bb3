package loadtest

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// hit sends one POST to d with the given headers and returns the status
// and Retry-After.
func hit(t *testing.T, d *Downstream, headers ...string) (int, string) {
	t.Helper()
	status, retry, err := post(d, headers...)
	if err != nil {
		t.Fatalf("POST %s: %v", d.URL(), err)
	}
	return status, retry
}

// post is hit for goroutines other than the test's, which must not Fatal.
func post(d *Downstream, headers ...string) (int, string, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(d.URL() + "/api/orders")
	req.Header.SetMethod(fasthttp.MethodPost)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	req.SetBodyString(`{"x":1}`)
	err := testClient.DoTimeout(req, resp, 5*time.Second)
	return resp.StatusCode(), string(resp.Header.Peek("Retry-After")), err
}

var testClient = &fasthttp.Client{}

func startDownstream(t *testing.T, cfg DownstreamConfig) *Downstream {
	t.Helper()
	d, err := StartDownstream(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// fakeClock is a settable clock for DownstreamConfig.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestDownstreamRecordsDeliveries(t *testing.T) {
	clock := &fakeClock{now: t0}
	d := startDownstream(t, DownstreamConfig{Now: clock.Now})
	if !strings.HasPrefix(d.URL(), "http://127.0.0.1:") {
		t.Errorf("URL() = %q, want http://127.0.0.1:port", d.URL())
	}
	enq := t0.Add(-time.Second).Format(time.RFC3339Nano)
	for _, h := range [][]string{
		{"X-Sluice-Id", "a", "X-Sluice-Attempt", "1", "X-Sluice-Enqueued-At", enq},
		{"X-Sluice-Id", "b", "X-Sluice-Enqueued-At", "not a time"},
		{"X-Sluice-Id", "a", "X-Sluice-Attempt", "2", "X-Sluice-Enqueued-At", enq},
		{}, // no id: counted under ""
	} {
		if status, _ := hit(t, d, h...); status != 200 {
			t.Fatalf("status %d, want 200", status)
		}
		clock.Advance(10 * time.Millisecond)
	}

	if got, want := d.Deliveries(), map[string]int{"a": 2, "b": 1, "": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("Deliveries() = %v, want %v", got, want)
	}
	arr := d.Arrivals()
	wantA := []Delivery{
		{ID: "a", At: t0, EnqueuedAt: t0.Add(-time.Second), Attempt: 1},
		{ID: "a", At: t0.Add(20 * time.Millisecond), EnqueuedAt: t0.Add(-time.Second), Attempt: 2},
	}
	if !reflect.DeepEqual(arr["a"], wantA) {
		t.Errorf("Arrivals()[a] = %+v, want %+v", arr["a"], wantA)
	}
	if b := arr["b"]; len(b) != 1 || !b[0].EnqueuedAt.IsZero() || b[0].Attempt != 0 {
		t.Errorf("Arrivals()[b] = %+v, want one with zero EnqueuedAt and Attempt", b)
	}
	if got := d.Missing([]string{"a", "c", "b", "d"}); !reflect.DeepEqual(got, []string{"c", "d"}) {
		t.Errorf("Missing = %v, want [c d]", got)
	}
	s := d.Stats()
	if s.Requests != 4 || s.Received != 4 || s.Rejected != 0 || s.MaxPerSecond != 4 || s.Arrivals.Total() != 4 || s.IDs != 2 {
		t.Errorf("Stats() = %+v", s)
	}
}

// With a fake clock, the token bucket is exact: a full bucket, then one
// token per 1/Rate.
func TestDownstreamRateLimitExact(t *testing.T) {
	clock := &fakeClock{now: t0}
	d := startDownstream(t, DownstreamConfig{Rate: 100, Burst: 10, Now: clock.Now})

	count := func(n int) (ok, throttled int) {
		for range n {
			switch status, retry := hit(t, d); {
			case status == 200:
				ok++
			case status == 429 && retry == "1":
				throttled++
			default:
				t.Fatalf("status %d Retry-After %q", status, retry)
			}
		}
		return ok, throttled
	}
	if ok, th := count(30); ok != 10 || th != 20 {
		t.Errorf("at once: %d ok, %d throttled; want 10, 20", ok, th)
	}
	clock.Advance(50 * time.Millisecond) // 5 tokens
	if ok, th := count(6); ok != 5 || th != 1 {
		t.Errorf("after 50ms: %d ok, %d throttled; want 5, 1", ok, th)
	}
	s := d.Stats()
	if s.Received != 15 || s.Throttled != 21 || s.Rejected != 21 || s.MaxPerSecond != 15 ||
		s.MaxAttemptsPerSecond != 36 || s.Attempts.Total() != 36 {
		t.Errorf("Stats() = %+v", s)
	}
	if s.Rate != 100 || s.Burst != 10 {
		t.Errorf("capacity in Stats = %g/%d, want 100/10", s.Rate, s.Burst)
	}
}

// On the wall clock: offer 3x the capacity for about 0.6s.
func TestDownstreamCapacityRealTime(t *testing.T) {
	const rate, burst = 100, 10
	d := startDownstream(t, DownstreamConfig{Rate: rate, Burst: burst})
	start := time.Now()
	ok, throttled := 0, 0
	for i := range 180 { // 300/s for 0.6s
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / 300)))
		if status, _ := hit(t, d); status == 200 {
			ok++
		} else if status == 429 {
			throttled++
		}
	}
	elapsed := time.Since(start)
	if limit := int(rate*elapsed.Seconds()) + burst; ok > limit {
		t.Errorf("%d answered 200 in %v, limit %d", ok, elapsed, limit)
	}
	if throttled == 0 {
		t.Error("no 429 at 3x capacity")
	}
	if peak := d.Stats().MaxPerSecond; peak > rate+burst {
		t.Errorf("peak %d/s above %d", peak, rate+burst)
	}
}

func TestDownstreamConcurrencyLimit(t *testing.T) {
	d := startDownstream(t, DownstreamConfig{Concurrency: 2, Latency: 300 * time.Millisecond})
	statuses := make(chan int, 5)
	retries := make(chan string, 5)
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			status, retry, err := post(d)
			if err != nil {
				t.Error(err)
			}
			statuses <- status
			if status == 503 {
				retries <- retry
			}
		})
	}
	wg.Wait()
	close(statuses)
	close(retries)
	counts := map[int]int{}
	for s := range statuses {
		counts[s]++
	}
	if counts[200] != 2 || counts[503] != 3 {
		t.Errorf("statuses %v, want 2x200 and 3x503", counts)
	}
	for r := range retries {
		if r != "1" {
			t.Errorf("503 with Retry-After %q, want 1", r)
		}
	}
	s := d.Stats()
	if s.Overloaded != 3 || s.MaxConcurrent < 3 {
		t.Errorf("Overloaded %d MaxConcurrent %d, want 3 and >= 3", s.Overloaded, s.MaxConcurrent)
	}
}

func TestDownstreamFailRate(t *testing.T) {
	run := func(cfg DownstreamConfig) []int {
		d := startDownstream(t, cfg)
		var got []int
		for range 200 {
			status, _ := hit(t, d)
			got = append(got, status)
		}
		return got
	}
	cfg := DownstreamConfig{FailRate: 0.3, Seed: 7}
	first := run(cfg)
	failed := 0
	for _, s := range first {
		if s == 503 {
			failed++
		}
	}
	if failed < 30 || failed > 90 {
		t.Errorf("%d of 200 failed at FailRate 0.3", failed)
	}
	if again := run(cfg); !reflect.DeepEqual(first, again) {
		t.Error("same seed, sequential requests: different failures")
	}
	for _, s := range run(DownstreamConfig{FailRate: 1}) {
		if s != 503 {
			t.Fatalf("status %d at FailRate 1", s)
		}
	}
}

func TestDownstreamClose(t *testing.T) {
	d, err := StartDownstream(DownstreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	hit(t, d) // leave a keep-alive connection open
	done := make(chan error)
	go func() { done <- d.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, err := testClient.GetTimeout(nil, d.URL(), time.Second); err == nil {
		t.Error("request after Close succeeded")
	}
}

func TestDownstreamConfigValidate(t *testing.T) {
	for _, cfg := range []DownstreamConfig{
		{Listen: ":0"},
		{Listen: "0.0.0.0:8081"},
		{Listen: "nonsense"},
		{Rate: -1},
		{Burst: -1},
		{Concurrency: -1},
		{Latency: -1},
		{FailRate: 1.5},
	} {
		if _, err := StartDownstream(cfg); err == nil {
			t.Errorf("StartDownstream(%+v): no error", cfg)
		}
	}
	for _, listen := range []string{"", "127.0.0.1:0", "localhost:0", "[::1]:0"} {
		if err := (DownstreamConfig{Listen: listen}).Validate(); err != nil {
			t.Errorf("Listen %q: %v", listen, err)
		}
	}
}

// Injected faults: 429s, resets and hangs at the configured fractions, each
// seen by a client as what it is.
func TestDownstreamInjectedFaults(t *testing.T) {
	d, err := StartDownstream(DownstreamConfig{ThrottleRate: 0.2, ResetRate: 0.2, HangRate: 0.2, HangFor: 2 * time.Second, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var ok, r429, resets, timeouts int
	for i := range 100 {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI(d.URL() + "/x")
		req.Header.SetMethod("POST")
		req.Header.Set("X-Sluice-Id", fmt.Sprint("id-", i))
		err := fasthttp.DoTimeout(req, resp, 200*time.Millisecond)
		switch {
		case err == nil && resp.StatusCode() == 200:
			ok++
		case err == nil && resp.StatusCode() == 429:
			r429++
		case errors.Is(err, fasthttp.ErrTimeout):
			timeouts++
		case err != nil:
			resets++
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	st := d.Stats()
	if r429 == 0 || resets == 0 || timeouts == 0 || ok == 0 {
		t.Fatalf("ok %d, 429 %d, resets %d, timeouts %d: want some of each", ok, r429, resets, timeouts)
	}
	if uint64(r429) != st.Injected || st.Resets == 0 || st.Hung == 0 {
		t.Fatalf("client saw 429 %d, resets %d, timeouts %d; stats %+v", r429, resets, timeouts, st)
	}
	if _, err := StartDownstream(DownstreamConfig{FailRate: 0.6, ResetRate: 0.6}); err == nil {
		t.Fatal("fractions adding up past 1 were accepted")
	}
}
