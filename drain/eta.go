package drain

import "time"

// ETA estimates when this target delivers a message that arrives at now
// behind backlog others (its queue's pending, in-flight and retrying
// messages): policies.Target.ETA over the schedule in force, that is the
// windows with the base rate as SetRate left it. ok is false while Pause is
// in force (it has no end) or when the schedule never delivers. The adaptive
// rate and the circuit breaker are not counted: they change by the second.
func (d *Drainer) ETA(now time.Time, backlog uint64) (time.Time, bool) {
	d.mu.Lock()
	base, manual := d.base, d.paused
	d.mu.Unlock()
	if manual {
		return time.Time{}, false
	}
	t := d.target
	t.Rate = base
	return t.ETA(now, float64(backlog))
}
