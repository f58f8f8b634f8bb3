package drain

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

// TestBreaker drives the breaker on a fake clock.
func TestBreaker(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	b := newBreaker(policies.Breaker{Failures: 3, Cooldown: time.Second, MaxCooldown: 3 * time.Second})
	expect := func(now time.Time, wantN int, wantState BreakerState) {
		t.Helper()
		n, _ := b.Allow(now)
		if n != wantN || b.state != wantState {
			t.Fatalf("at %v: Allow = %d in %v; want %d in %v", now.Sub(t0), n, b.state, wantN, wantState)
		}
	}
	expect(at(0), -1, BreakerClosed)
	// Two failures, a success: the streak starts again.
	b.Done(at(0), true, b.Started(at(0)))
	b.Done(at(0), true, b.Started(at(0)))
	b.Done(at(0), false, b.Started(at(0)))
	b.Done(at(0), true, b.Started(at(0)))
	b.Done(at(0), true, b.Started(at(0)))
	expect(at(0), -1, BreakerClosed)
	if st, changed := b.Done(at(0), true, false); st != BreakerOpen || !changed {
		t.Fatalf("third failure in a row: %v, changed %v", st, changed)
	}
	n, until := b.Allow(at(500 * ms))
	if n != 0 || !until.Equal(at(time.Second)) {
		t.Fatalf("open: Allow = %d until %v", n, until)
	}
	// Late failures of attempts sent before it opened change nothing.
	if _, changed := b.Done(at(600*ms), true, false); changed {
		t.Fatal("a late failure changed the state")
	}
	// Half-open after the cooldown: one probe at a time.
	expect(at(time.Second), 1, BreakerHalfOpen)
	if !b.Started(at(time.Second)) {
		t.Fatal("the first attempt when half-open is not a probe")
	}
	expect(at(time.Second), 0, BreakerHalfOpen)
	// The probe fails: open for 2s, then 3s (the cap), then 3s.
	if st, _ := b.Done(at(time.Second+10*ms), true, true); st != BreakerOpen || b.openUntil != at(3*time.Second+10*ms) {
		t.Fatalf("failed probe: %v until %v, want open for 2s", st, b.openUntil.Sub(t0))
	}
	for i, cd := range []time.Duration{3 * time.Second, 3 * time.Second} {
		now := b.openUntil
		expect(now, 1, BreakerHalfOpen)
		probe := b.Started(now)
		if st, _ := b.Done(now.Add(10*ms), true, probe); st != BreakerOpen || b.openUntil != now.Add(10*ms+cd) {
			t.Fatalf("failed probe %d: %v until %v, want open for %v", i, st, b.openUntil.Sub(now), cd)
		}
	}
	if b.opens != 4 {
		t.Errorf("opens %d, want 4", b.opens)
	}
	// A probe that succeeds closes it, and the next opening starts at Cooldown.
	now := b.openUntil
	probe := b.Started(now)
	if st, changed := b.Done(now, false, probe); st != BreakerClosed || !changed || b.probing != 0 {
		t.Fatalf("successful probe: %v, changed %v, probing %d", st, changed, b.probing)
	}
	for range 3 {
		b.Done(now, true, b.Started(now))
	}
	if b.state != BreakerOpen || b.openUntil != now.Add(time.Second) {
		t.Fatalf("reopened: %v for %v, want 1s", b.state, b.openUntil.Sub(now))
	}
}

func TestFailed(t *testing.T) {
	for _, tc := range []struct {
		res  result
		want bool
	}{
		{result{status: 200}, false}, {result{status: 404}, false}, {result{status: 429}, false},
		{result{status: 500}, true}, {result{status: 503}, true},
		{result{err: fasthttp.ErrTimeout}, true}, {result{err: fasthttp.ErrConnectionClosed}, true},
	} {
		if got := failed(&tc.res); got != tc.want {
			t.Errorf("failed(%+v) = %v", tc.res, got)
		}
	}
}

// TestBreakerOutage: a target that answers 503 to everything for 3s, then
// recovers. The breaker bounds what it receives during the outage, and
// everything is delivered after.
func TestBreakerOutage(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var during atomic.Int64
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if down.Load() {
			during.Add(1)
			ctx.SetStatusCode(503)
		}
	})
	_, q, _ := newQueue(t, "a")
	const n = 200
	msgs := appendN(t, q, n, order)
	target := testTarget("a", ds.url)
	target.Concurrency = 4
	target.Retry = policies.Retry{MaxAttempts: 30, Initial: 10 * ms, Max: 50 * ms, On: defaultOn}
	target.Breaker = policies.Breaker{Failures: 5, Cooldown: 200 * ms, MaxCooldown: 800 * ms}
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))

	waitFor(t, 5*time.Second, "the breaker to open", func() bool { return d.Stats().Breaker != BreakerClosed })
	time.Sleep(3 * time.Second)
	st := d.Stats()
	down.Store(false)
	outage := during.Load()
	// 5 failures open it, up to 4 more were in flight, then one probe per
	// cooldown (200ms, 400ms, 800ms, 800ms...): about 5 in 3s. Without the
	// breaker, 4 connections retrying every 10-50ms make hundreds.
	t.Logf("%d requests during the outage; stats then %+v", outage, st)
	if outage > 25 {
		t.Errorf("%d requests reached the target during the outage; want at most 25", outage)
	}
	if st.BreakerOpens < 3 {
		t.Errorf("breaker opened %d times in 3s of outage; want a failed probe every cooldown", st.BreakerOpens)
	}
	if ph := status(t, q, msgs[n-1].ID, "a").Phase; ph != buffer.Queued {
		t.Errorf("the last message is %s during the outage; want queued (nothing fetched while open)", ph)
	}

	waitFor(t, 10*time.Second, "every message delivered after the outage", func() bool { return d.Stats().Delivered == n })
	st = d.Stats()
	if st.Dead != 0 || st.Breaker != BreakerClosed {
		t.Errorf("after recovery: stats %+v", st)
	}
	if got := len(ds.ids()); got != n {
		t.Errorf("%d distinct ids arrived, want %d", got, n)
	}
}

// TestBreakerConnectRefused: nothing listens for 1.5s; the breaker bounds
// the connection attempts, and everything is delivered once it listens.
func TestBreakerConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	_, q, _ := newQueue(t, "a")
	const n = 50
	appendN(t, q, n, order)
	target := testTarget("a", "http://"+addr)
	target.Concurrency = 4
	target.Retry = policies.Retry{MaxAttempts: 30, Initial: 10 * ms, Max: 50 * ms, On: defaultOn}
	target.Breaker = policies.Breaker{Failures: 5, Cooldown: 100 * ms, MaxCooldown: 400 * ms}
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	time.Sleep(1500 * ms)
	attempts := d.Stats().Attempts
	t.Logf("%d connection attempts in 1.5s", attempts)
	if attempts > 25 {
		t.Errorf("%d connection attempts in 1.5s with the breaker; want at most 25", attempts)
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	ds := serveDownstream(t, ln, nil)
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == n })
	if got := len(ds.ids()); got != n {
		t.Errorf("%d distinct ids, want %d", got, n)
	}
}

// TestBreakerProbeLeavesNothingBehind: the half-open breaker's probe
// succeeds while other due messages wait. None of them may stay fetched and
// unsent (in flight in the store, where no Fetch finds it) once the breaker
// has closed and the chain is open.
func TestBreakerProbeLeavesNothingBehind(t *testing.T) {
	const failures = 5
	var answered atomic.Int64
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if answered.Add(1) <= failures {
			ctx.SetStatusCode(503)
		}
	})
	_, q, _ := newQueue(t, "a")
	appendN(t, q, failures, order)
	target := testTarget("a", ds.url)
	target.Concurrency = 16
	target.Retry = policies.Retry{MaxAttempts: 10, Initial: 10 * ms, Max: 20 * ms, On: defaultOn}
	target.Breaker = policies.Breaker{Failures: failures, Cooldown: 200 * ms, MaxCooldown: time.Second}
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 5*time.Second, "the breaker to open", func() bool { return d.Stats().BreakerOpens > 0 })
	// The probe and then the others, at once: within a few safety polls,
	// not at the end of the Run.
	waitFor(t, 3*time.Second, "every message delivered after the probe", func() bool { return d.Stats().Delivered == failures })
	if st := d.Stats(); st.Dead != 0 || st.Breaker != BreakerClosed {
		t.Errorf("stats %+v", st)
	}
}
