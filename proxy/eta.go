package proxy

import (
	"fmt"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

// Estimated delivery times ("tell the producer when").
//
// A new message for a target waits behind that target's backlog: the
// messages of its queue pending, in flight and retrying (buffer.Queue.Stats).
// Its ETA is when the target's schedule in force (its rate, windows, and an
// operator's SetRate or Pause) has let that many through
// (policies.Target.ETA). The 202 carries it per target; the status API
// carries it for a message still queued (with the backlog ahead of it
// instead) or retrying. A route with max_wait refuses a new request with 503
// backlog_too_long when some target's ETA is later than now + max_wait (or
// unknown: paused with no end), before storing anything.

// Estimator is what the proxy needs from a target's drainer to estimate
// delivery times; *drain.Drainer implements it. Without one (SetEstimator
// not called), the target's schedule in the policy is used.
type Estimator interface {
	// ETA returns when a message arriving at now behind backlog others
	// would be delivered; ok is false if that is unknown (paused, no end).
	ETA(now time.Time, backlog uint64) (eta time.Time, ok bool)
}

type estimatorBox struct{ Estimator }

// SetEstimator connects the named target of a buffer or spillover route to
// its drainer, so that estimates follow the rate in force.
func (s *Server) SetEstimator(route, target string, e Estimator) error {
	for _, r := range s.routes {
		if r.Name != route {
			continue
		}
		for i := range r.Targets {
			if r.Targets[i].Name == target && i < len(r.est) {
				r.est[i].Store(&estimatorBox{e})
				return nil
			}
		}
		return fmt.Errorf("proxy: route %q has no target %q", route, target)
	}
	return fmt.Errorf("proxy: no route %q", route)
}

// eta estimates target i of r.
func (r *route) eta(i int, now time.Time, backlog uint64) (time.Time, bool) {
	if i < len(r.est) {
		if e := r.est[i].Load(); e != nil {
			return e.ETA(now, backlog)
		}
	}
	return r.Targets[i].ETA(now, float64(backlog))
}

// targetETA is one target's estimate, for the 202 body.
type targetETA struct {
	name string
	at   time.Time
	ok   bool
}

// maxTargetsInline is how many targets' estimates are kept without allocating.
const maxTargetsInline = 8

// newETAs estimates every target of r for a message arriving now. dst is
// reused (pass a stack array's slice).
func (r *route) newETAs(dst []targetETA, now time.Time) []targetETA {
	st := r.queue.Stats()
	for i := range r.Targets {
		var backlog uint64
		if i < len(st.Targets) {
			ts := st.Targets[i]
			backlog = ts.Pending + uint64(ts.InFlight) + uint64(ts.Retrying)
		}
		at, ok := r.eta(i, now, backlog)
		dst = append(dst, targetETA{name: r.Targets[i].Name, at: at, ok: ok})
	}
	return dst
}

// statusETA estimates the delivery of a stored message for one target, from
// its status: for a queued message, behind the messages in flight and
// retrying and those pending ahead of it (a message rewound by a shutdown may
// count a few too many); for a retrying one, the first instant at or after
// its next try at which the schedule lets a message through, since due
// retries are fetched before new messages. Other phases have none.
func (r *route) statusETA(i int, seq uint64, st *buffer.TargetStatus, qs *buffer.QueueStats, now time.Time) (time.Time, bool) {
	switch st.Phase {
	case buffer.Queued:
		var ahead uint64
		if i < len(qs.Targets) {
			ts := qs.Targets[i]
			ahead = uint64(ts.InFlight) + uint64(ts.Retrying)
			if cursor := qs.Appended + 1 - ts.Pending; seq > cursor {
				ahead += seq - cursor
			}
		}
		return r.eta(i, now, ahead)
	case buffer.Retrying:
		return r.eta(i, later(now, st.NextTry), 0)
	}
	return time.Time{}, false
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Bounds of the Retry-After of a 503 backlog_too_long.
const (
	minWaitRetry = time.Second
	maxWaitRetry = time.Hour
)

// overMaxWait answers 503 backlog_too_long and reports true if some target's
// ETA in etas exceeds now + r.MaxWait. Retry-After is how long until a new
// message's ETA falls within max_wait as the backlog drains at the rate in
// force (the ETA of a message that waits behind the same backlog stays put
// while now moves on), bounded to [1s, 1h]; 1h if the ETA is unknown.
func overMaxWait(ctx *fasthttp.RequestCtx, r *route, etas []targetETA, now time.Time) bool {
	if r.MaxWait <= 0 {
		return false
	}
	deadline := now.Add(r.MaxWait)
	for _, e := range etas {
		if e.ok && !e.at.After(deadline) {
			continue
		}
		wait := maxWaitRetry
		msg := fmt.Sprintf("target %q of route %q is paused with no end in sight; max_wait is %s; nothing was stored", e.name, r.Name, r.MaxWait)
		var at *time.Time
		if e.ok {
			wait = min(max(e.at.Sub(deadline), minWaitRetry), maxWaitRetry)
			u := e.at.UTC().Truncate(time.Second)
			at = &u
			msg = fmt.Sprintf("target %q of route %q would deliver this request at about %s, later than max_wait %s from now; nothing was stored",
				e.name, r.Name, u.Format(time.RFC3339), r.MaxWait)
		}
		secs := int((wait + time.Second - 1) / time.Second)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, errorBody{Error: errorDetail{
			Code: "backlog_too_long", Message: msg, Target: e.name, ETA: at,
		}})
		return true
	}
	return false
}

// storedETAs estimates every target of r for the stored message id, as the
// status API does; a target with no estimate (delivered, dead, in flight) is
// listed without one. If the lookup fails, it lists the targets only.
func (r *route) storedETAs(dst []targetETA, id buffer.ID, now time.Time) []targetETA {
	_, sts, err := r.queue.Lookup(id)
	qs := r.queue.Stats()
	for i := range r.Targets {
		e := targetETA{name: r.Targets[i].Name}
		if err == nil && i < len(sts) {
			e.at, e.ok = r.statusETA(i, id.Seq(), &sts[i], &qs, now)
		}
		dst = append(dst, e)
	}
	return dst
}
