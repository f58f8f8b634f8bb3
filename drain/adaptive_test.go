package drain

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6*math.Max(1, math.Abs(b)) }

// TestAIMD drives the controller on a fake clock.
func TestAIMD(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c := newAIMD(&policies.Adaptive{MinRate: policies.Rate{PerSecond: 10}, Increase: policies.Rate{PerSecond: 5}, Decrease: 0.5})
	const ceiling = 100.0
	step := func(what string, got, want float64) {
		t.Helper()
		if !near(got, want) {
			t.Fatalf("%s: rate %v, want %v", what, got, want)
		}
	}
	step("start", c.Rate(at(0), ceiling), 100)
	step("no signal", c.Rate(at(time.Second), ceiling), 100) // capped at the ceiling

	if !c.Observe(at(time.Second), at(900*ms), true, ceiling) {
		t.Fatal("first 429 did not cut")
	}
	step("after a cut", c.Rate(at(time.Second), ceiling), 50)
	// The rest of the burst: requests sent before the cut, or too soon after it.
	if c.Observe(at(time.Second+20*ms), at(990*ms), true, ceiling) {
		t.Fatal("a 429 to a request sent before the cut cut again")
	}
	if c.Observe(at(time.Second+50*ms), at(time.Second+10*ms), true, ceiling) {
		t.Fatal("a second cut within 100ms")
	}
	step("one burst, one cut", c.Rate(at(time.Second+50*ms), ceiling), 50+5*0.05)
	if c.cuts != 1 {
		t.Fatalf("cuts %d, want 1", c.cuts)
	}
	// Additive increase: 5/s per second.
	step("+2s", c.Rate(at(3*time.Second), ceiling), 60)
	// Cuts never go below min_rate.
	for i := range 10 {
		now := at(4*time.Second + time.Duration(i)*200*ms)
		c.Observe(now, now.Add(-ms), true, ceiling)
	}
	step("floor", c.Rate(at(5800*ms), ceiling), 10)
	// Back to the ceiling, and no further: (100-10)/5 = 18s.
	step("recovering", c.Rate(at(15*time.Second), ceiling), 10+5*(15-5.8))
	step("recovered", c.Rate(at(40*time.Second), ceiling), 100)

	// A lower ceiling (a window, SetRate) caps it at once; a min_rate above
	// the ceiling gives way to the ceiling.
	step("ceiling 30", c.Rate(at(41*time.Second), 30), 30)
	step("ceiling 5", c.Rate(at(42*time.Second), 5), 5)
	c.Observe(at(43*time.Second), at(43*time.Second), true, 5)
	step("cut under ceiling 5", c.Rate(at(43*time.Second), 5), 5)

	// Unlimited ceiling: nothing to scale.
	if c.Observe(at(50*time.Second), at(50*time.Second), true, math.Inf(1)) {
		t.Error("cut with an unlimited ceiling")
	}
	if r := c.Rate(at(50*time.Second), math.Inf(1)); !math.IsInf(r, 1) {
		t.Errorf("unlimited ceiling: rate %v", r)
	}
	// Finite again: starts at the ceiling.
	step("finite again", c.Rate(at(51*time.Second), 80), 80)

	// A clock that steps back does not add.
	step("clock back", c.Rate(at(50*time.Second), 80), 80)
}

// TestAIMDDefaults: decrease 0.7, increase 5% of the ceiling per second.
func TestAIMDDefaults(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newAIMD(&policies.Adaptive{MinRate: policies.Rate{PerSecond: 1}})
	c.Rate(t0, 200)
	c.Observe(t0, t0, true, 200)
	if r := c.Rate(t0, 200); !near(r, 140) {
		t.Errorf("after a cut: %v, want 140", r)
	}
	if r := c.Rate(t0.Add(2*time.Second), 200); !near(r, 160) {
		t.Errorf("2s later: %v, want 160 (+10/s per second)", r)
	}
}

func TestAIMDCongested(t *testing.T) {
	c := newAIMD(&policies.Adaptive{MinRate: policies.Rate{PerSecond: 1}, Latency: 500 * ms})
	noLat := newAIMD(&policies.Adaptive{MinRate: policies.Rate{PerSecond: 1}})
	for _, tc := range []struct {
		res         result
		want, want0 bool
	}{
		{result{status: 200, dur: 10 * ms}, false, false},
		{result{status: 429}, true, true},
		{result{status: 503}, true, true},
		{result{status: 500}, false, false},
		{result{status: 404}, false, false},
		{result{status: 200, dur: 600 * ms}, true, false},
		{result{status: 200, dur: 500 * ms}, false, false},
		{result{err: fasthttp.ErrTimeout}, true, true},
		{result{err: errors.New("connection reset by peer")}, false, false},
	} {
		if got := c.congested(&tc.res); got != tc.want {
			t.Errorf("latency 500ms: congested(%+v) = %v", tc.res, got)
		}
		if got := noLat.congested(&tc.res); got != tc.want0 {
			t.Errorf("no latency: congested(%+v) = %v", tc.res, got)
		}
	}
}

// TestAdaptiveSettles: a downstream that takes 100/s and answers 429 above
// that; the drainer, allowed 400/s, settles near 100/s with few 429s.
func TestAdaptiveSettles(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 6s")
	}
	const capacity = 100
	lim := rate.NewLimiter(capacity, capacity/10)
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if !lim.Allow() {
			ctx.SetStatusCode(429)
		}
	})
	_, q, _ := newQueue(t, "a")
	appendN(t, q, 1500, order)
	target := testTarget("a", ds.url)
	target.Rate = policies.Rate{PerSecond: 4 * capacity}
	target.Burst = 10
	target.Retry.MaxAttempts = 50
	target.Adaptive = &policies.Adaptive{MinRate: policies.Rate{PerSecond: 10}}
	d, stop := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 5*time.Second, "the first request", func() bool { return ds.count() > 0 })
	start := time.Now()
	time.Sleep(6 * time.Second)
	st := d.Stats()
	stop()

	// Settled: from 2s on.
	from, to := start.Add(2*time.Second), start.Add(6*time.Second)
	var ok, refused int
	for _, h := range ds.snapshot() {
		if h.at.Before(from) || !h.at.Before(to) {
			continue
		}
		if h.status == 429 {
			refused++
		} else {
			ok++
		}
	}
	secs := to.Sub(from).Seconds()
	frac := float64(refused) / float64(max(1, ok+refused))
	t.Logf("settled: %.1f/s delivered, %.1f%% answered 429, adaptive rate now %.1f/s after %d cuts; stats %+v",
		float64(ok)/secs, 100*frac, st.AdaptiveRate, st.AdaptiveCuts, st)
	if frac > 0.2 {
		t.Errorf("%.1f%% of the settled attempts were refused; want under 20%% (75%% without adaptive)", 100*frac)
	}
	if r := float64(ok) / secs; r < 0.5*capacity || r > 1.2*capacity {
		t.Errorf("delivered %.1f/s after settling; want near %d/s", r, capacity)
	}
	if st.AdaptiveCuts == 0 || st.AdaptiveRate < 10 || st.AdaptiveRate > 4*capacity || st.Rate != 4*capacity {
		t.Errorf("stats %+v", st)
	}
}
