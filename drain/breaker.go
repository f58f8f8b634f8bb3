package drain

import (
	"time"

	"github.com/sluice-proxy/sluice/policies"
)

// BreakerState is the state of a target's circuit breaker.
type BreakerState int

const (
	// BreakerClosed: attempts go out as the rate and concurrency allow.
	BreakerClosed BreakerState = iota
	// BreakerOpen: nothing is fetched or sent until the cooldown ends.
	BreakerOpen
	// BreakerHalfOpen: one probe at a time; its success closes the breaker,
	// its failure opens it again for twice as long (up to MaxCooldown).
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// breaker is a target's circuit breaker (Target.Breaker). After Failures
// consecutive failed attempts (no connection, a timeout or a 5xx) it opens:
// the drainer fetches and sends nothing, so queued messages neither go out
// nor spend their attempts. After the cooldown it is half-open and lets one
// attempt (a probe, carrying a real message) out at a time. A probe that
// succeeds closes it; one that fails opens it again with the cooldown
// doubled, up to MaxCooldown. Any answer that is not a failure (2xx, 4xx
// including 429, 3xx) counts as success: the target is there, and the rate
// (and the adaptive rate) deals with throttling.
//
// Every method takes the time; it is not safe for concurrent use: the run
// loop owns it.
type breaker struct {
	failures    int
	cooldown    time.Duration
	maxCooldown time.Duration

	state     BreakerState
	streak    int           // consecutive failures while closed
	openUntil time.Time     // while open
	cur       time.Duration // the cooldown of the current or last opening
	probing   int           // probes in flight
	opens     uint64
}

func newBreaker(b policies.Breaker) *breaker {
	return &breaker{failures: b.Failures, cooldown: b.Cooldown, maxCooldown: max(b.MaxCooldown, b.Cooldown)}
}

// failed reports whether an attempt's result counts against the target.
func failed(res *result) bool {
	return res.err != nil || res.status >= 500
}

// Allow reports how many attempts may start at now: -1 for no limit (closed),
// 0 (open, or a probe is out) or 1 (half-open). While open, until is when
// that ends.
func (b *breaker) Allow(now time.Time) (n int, until time.Time) {
	switch b.state {
	case BreakerOpen:
		if now.Before(b.openUntil) {
			return 0, b.openUntil
		}
		b.state = BreakerHalfOpen
		fallthrough
	case BreakerHalfOpen:
		return max(0, 1-b.probing), time.Time{}
	}
	return -1, time.Time{}
}

// Started notes that an attempt starts at now; it reports whether the
// attempt is a probe (the breaker is half-open).
func (b *breaker) Started(now time.Time) (probe bool) {
	if b.Allow(now); b.state == BreakerHalfOpen {
		b.probing++
		return true
	}
	return false
}

// Done takes the outcome of an attempt (probe: as Started said) at now and
// returns the state after it, and whether it changed.
func (b *breaker) Done(now time.Time, fail, probe bool) (BreakerState, bool) {
	if probe {
		b.probing--
	}
	before := b.state
	switch {
	case !fail:
		b.state, b.streak, b.cur = BreakerClosed, 0, 0
	case b.state == BreakerClosed:
		b.streak++
		if b.streak >= b.failures {
			b.open(now, b.cooldown)
		}
	case probe && b.state == BreakerHalfOpen:
		b.open(now, min(2*b.cur, b.maxCooldown))
	}
	// Failures of attempts sent before the breaker opened change nothing.
	return b.state, b.state != before
}

func (b *breaker) open(now time.Time, cooldown time.Duration) {
	b.state, b.streak, b.cur = BreakerOpen, 0, max(cooldown, time.Millisecond)
	b.openUntil = now.Add(b.cur)
	b.opens++
}
