package loadtest

import (
	"fmt"
	"math"
	"time"
)

// A Pacer gives the offered load as a function of the time elapsed since the
// start of a run. Because the rate depends on time alone, never on how the
// server answers, the load is open loop: a slow server gets more requests in
// flight, not fewer requests. Rates are requests per second and must not be
// negative.
type Pacer interface {
	Rate(elapsed time.Duration) float64
}

// integrator is implemented by pacers that know the exact integral of their
// rate. Hits uses it instead of numerical integration.
type integrator interface {
	integral(elapsed time.Duration) float64
}

// ConstantPacer offers PerSecond requests every second.
type ConstantPacer struct{ PerSecond float64 }

func (p ConstantPacer) Rate(time.Duration) float64 { return p.PerSecond }

func (p ConstantPacer) integral(t time.Duration) float64 { return p.PerSecond * t.Seconds() }

func (p ConstantPacer) String() string { return fmt.Sprintf("constant %g/s", p.PerSecond) }

// RampPacer goes linearly from From to To requests per second over Over,
// then stays at To.
type RampPacer struct {
	From, To float64
	Over     time.Duration
}

func (p RampPacer) Rate(t time.Duration) float64 {
	if t >= p.Over {
		return p.To
	}
	return p.From + (p.To-p.From)*t.Seconds()/p.Over.Seconds()
}

func (p RampPacer) integral(t time.Duration) float64 {
	if t <= p.Over {
		s := t.Seconds()
		return p.From*s + (p.To-p.From)*s*s/(2*p.Over.Seconds())
	}
	return (p.From+p.To)/2*p.Over.Seconds() + p.To*(t-p.Over).Seconds()
}

func (p RampPacer) String() string {
	return fmt.Sprintf("ramp %g/s to %g/s over %v", p.From, p.To, p.Over)
}

// SpikePacer offers Base requests per second, and Base*Factor during
// [At, At+For): the flash sale.
type SpikePacer struct {
	Base    float64
	Factor  float64
	At, For time.Duration
}

func (p SpikePacer) Rate(t time.Duration) float64 {
	if t >= p.At && t < p.At+p.For {
		return p.Base * p.Factor
	}
	return p.Base
}

func (p SpikePacer) integral(t time.Duration) float64 {
	inSpike := min(t, p.At+p.For) - p.At // time spent in the spike by t
	if inSpike < 0 {
		inSpike = 0
	}
	return p.Base*t.Seconds() + p.Base*(p.Factor-1)*inSpike.Seconds()
}

func (p SpikePacer) String() string {
	return fmt.Sprintf("spike %g/s, x%g at %v for %v", p.Base, p.Factor, p.At, p.For)
}

// Hits returns how many requests p says should have been sent by elapsed:
// the integral of p.Rate from 0 to elapsed, rounded down. Request number n
// (counting from 1) is due at the first instant when Hits reaches n.
//
// Hits is exact for ConstantPacer, RampPacer and SpikePacer. Other pacers
// are integrated numerically (trapezoid rule, steps of 1ms, at most
// maxSteps of them), which is close for smooth rates but may be off by a
// fraction of a step at a jump.
func Hits(p Pacer, elapsed time.Duration) uint64 {
	x := integral(p, elapsed)
	if x <= 0 {
		return 0
	}
	// The guard keeps float error from turning an exact 500 into 499.
	return uint64(math.Floor(x + 1e-9))
}

const maxSteps = 4096

func integral(p Pacer, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	if i, ok := p.(integrator); ok {
		return i.integral(elapsed)
	}
	// A bounded number of steps keeps the generator's per-wake cost flat on
	// long runs; the step grows instead.
	steps := min(int64(elapsed/time.Millisecond)+1, maxSteps)
	sum := (p.Rate(0) + p.Rate(elapsed)) / 2
	for i := int64(1); i < steps; i++ {
		sum += p.Rate(time.Duration(math.Round(float64(elapsed) * float64(i) / float64(steps))))
	}
	return sum * elapsed.Seconds() / float64(steps)
}

// nextDue estimates how long after elapsed request sent+1 falls due. The
// rate may change meanwhile, so callers re-check Hits when they wake; the
// cap makes a zero or tiny rate be looked at again soon.
func nextDue(p Pacer, elapsed time.Duration, sent uint64) time.Duration {
	const maxWait = 10 * time.Millisecond
	r := p.Rate(elapsed)
	if r <= 0 {
		return maxWait
	}
	missing := float64(sent+1) - integral(p, elapsed)
	// Rounded up and at least 1ns: a wait of 0 would wake at the same
	// elapsed again and make no progress.
	wait := time.Duration(math.Ceil(missing / r * float64(time.Second)))
	return min(max(wait, 1), maxWait)
}
