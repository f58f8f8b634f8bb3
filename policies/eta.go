package policies

import (
	"math"
	"time"
)

// etaHorizon bounds an estimate: a delivery further ahead than this is
// reported as unknown (ETA returns false). Nobody plans ten years ahead, and
// the bound keeps every time in range.
const etaHorizon = 10 * 365 * 24 * time.Hour

// week is how far the schedule of windows repeats (up to daylight saving time).
const week = 7 * 24 * time.Hour

// ETA estimates when a target delivers the message that arrives at now
// behind backlog messages: the instant at which the target's schedule
// (RateAt, window by window via NextChange) has let backlog messages
// through, starting at now, and then lets this one through: an unlimited
// rate delivers at once, a paused window (rate 0) lets nothing through
// until it ends (not even a message with nothing ahead), and a finite rate
// lets r×seconds through. ok is false when the estimate is unknown: the
// target is paused with no end (rate 0 and no window ever opens), or the
// delivery is more than ten years away.
//
// It ignores burst and concurrency (which matter for seconds, not hours),
// and messages that arrive after this one (which queue behind it). Past one
// full week of windows it skips whole weeks at once, so a backlog of days
// behind a nightly window costs a few dozen steps, not one per night.
func (t *Target) ETA(now time.Time, backlog float64) (time.Time, bool) {
	if backlog <= 0 || math.IsNaN(backlog) {
		backlog = 0
	}
	limit := now.Add(etaHorizon)
	at := now
	left := backlog
	weekEnd := now.Add(week)
	walked := 0.0 // messages the schedule lets through from now to at, for the first week
	skipped := false
	for at.Before(limit) {
		r := t.RateAt(at)
		next := t.NextChange(at)
		if r.Unlimited {
			return at, true
		}
		if next.IsZero() { // no windows: this rate for ever
			if r.PerSecond <= 0 {
				return time.Time{}, false
			}
			return addSeconds(at, left/r.PerSecond, limit)
		}
		span := next.Sub(at).Seconds()
		can := r.PerSecond * span
		// A paused span (rate 0) lets nothing through, not even this
		// message with nothing ahead of it: it waits for the span's end.
		if left <= can && r.PerSecond > 0 {
			return addSeconds(at, left/r.PerSecond, limit)
		}
		left -= can
		if !skipped {
			walked += can
		}
		at = next
		if !skipped && !at.Before(weekEnd) {
			skipped = true
			if walked <= 0 {
				return time.Time{}, false // a whole week of rate 0: paused for good
			}
			// Whole weeks that the backlog still needs, at the mean rate of
			// the span walked (a week or a little more), moved on the wall
			// clock of the target's zone so the windows line up again.
			weekCap := walked / at.Sub(now).Seconds() * week.Seconds()
			if n := math.Floor(left / weekCap); n >= 1 {
				if n*week.Hours() > etaHorizon.Hours() {
					return time.Time{}, false
				}
				at = at.In(t.location()).AddDate(0, 0, 7*int(n))
				left -= n * weekCap
			}
		}
	}
	return time.Time{}, false
}

// addSeconds returns at + secs, or false if that is past limit.
func addSeconds(at time.Time, secs float64, limit time.Time) (time.Time, bool) {
	if secs > limit.Sub(at).Seconds() {
		return time.Time{}, false
	}
	return at.Add(time.Duration(math.Ceil(secs * 1e9))), true
}
