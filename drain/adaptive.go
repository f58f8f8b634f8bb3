package drain

import (
	"math"
	"time"

	"github.com/sluice-proxy/sluice/policies"
)

// minCutInterval is the shortest time between two cuts of the adaptive rate:
// a burst of refusals that answers one rate is one signal, not many.
const minCutInterval = 100 * time.Millisecond

// aimd is the adaptive-rate controller of a target (Target.Adaptive): additive
// increase, multiplicative decrease, as TCP's congestion control does with its
// window.
//
// Its rate lives between a floor, min(MinRate, ceiling), and the ceiling, the
// rate in force (Target.Rate, a window's rate or SetRate's). It starts at the
// ceiling. A congestion signal (a 429 or 503, a timeout, an attempt slower
// than Latency) multiplies it by Decrease, at most once per minCutInterval
// and only for attempts that started after the previous cut: the answers to
// requests sent at the old rate say nothing about the new one, so one burst
// of refusals is one cut (once per round trip, or per 100ms if the round trip
// is shorter). Otherwise the rate grows by Increase per second (5% of the
// ceiling per second when Increase is zero) until it is back at the ceiling.
// While the ceiling is unlimited the controller has nothing to scale and
// stays out of the way.
//
// Every method takes the time; nothing reads a clock, so tests run on a fake
// one. It is not safe for concurrent use: the run loop owns it.
type aimd struct {
	min      float64 // floor, requests per second, > 0
	increase float64 // requests per second added per second; 0 = 5% of the ceiling
	decrease float64 // factor, in (0, 1)
	latency  time.Duration

	rate    float64   // at last; +Inf while the ceiling is unlimited
	last    time.Time // when rate was last brought up to date; zero before the first use
	lastCut time.Time // zero if never cut
	cuts    uint64
}

func newAIMD(a *policies.Adaptive) *aimd {
	c := &aimd{
		min:      a.MinRate.PerSecond,
		increase: a.Increase.PerSecond,
		decrease: a.Decrease,
		latency:  a.Latency,
		rate:     math.Inf(1),
	}
	if c.decrease <= 0 || c.decrease >= 1 {
		c.decrease = policies.DefaultAdaptiveDecrease
	}
	return c
}

// Rate returns the adaptive rate at now under ceiling (requests per second;
// +Inf for unlimited): never above the ceiling, never below min(min, ceiling).
func (c *aimd) Rate(now time.Time, ceiling float64) float64 {
	if math.IsInf(ceiling, 1) {
		c.rate, c.last = math.Inf(1), now
		return c.rate
	}
	if c.last.IsZero() || math.IsInf(c.rate, 1) {
		c.rate = ceiling
	} else if dt := now.Sub(c.last).Seconds(); dt > 0 {
		inc := c.increase
		if inc <= 0 {
			inc = ceiling * policies.DefaultAdaptiveIncreasePc / 100
		}
		c.rate += inc * dt
	}
	if now.After(c.last) || c.last.IsZero() {
		c.last = now
	}
	c.rate = min(max(c.rate, min(c.min, ceiling)), ceiling)
	return c.rate
}

// congested reports whether an attempt's result is a congestion signal.
func (c *aimd) congested(res *result) bool {
	switch {
	case res.status == 429 || res.status == 503:
		return true
	case res.err != nil:
		kind, _ := classify(res.err, 0)
		return kind == failTimeout
	case c.latency > 0 && res.dur > c.latency:
		return true
	}
	return false
}

// Observe takes the result of an attempt that started at started and ended
// at now, and cuts the rate if it is a congestion signal that counts. It
// reports whether it cut.
func (c *aimd) Observe(now, started time.Time, congested bool, ceiling float64) bool {
	r := c.Rate(now, ceiling)
	if !congested || math.IsInf(r, 1) {
		return false
	}
	if !c.lastCut.IsZero() && (started.Before(c.lastCut) || now.Sub(c.lastCut) < minCutInterval) {
		return false
	}
	c.rate = max(r*c.decrease, min(c.min, ceiling))
	c.lastCut = now
	c.cuts++
	return true
}
