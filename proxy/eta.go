package proxy

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/store"
)

// Estimated delivery times ("tell the producer when").
//
// A new message for a target waits behind that target's backlog: the
// messages of its queue pending, in flight and retrying (store.Queue.Stats).
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
	for _, r := range s.routes() {
		if r.Name != route {
			continue
		}
		for i := range r.Targets {
			if r.Targets[i].Name == target && i < len(r.est) {
				r.est[i].Store(&estimatorBox{e})
				r.etaCache.Store(nil)
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
	name  string
	at    time.Time
	ok    bool
	phase store.Phase // a stored message's phase (storedETAs); "" for a new one
}

// maxTargetsInline is how many targets' estimates are kept without allocating.
const maxTargetsInline = 8

// newETAs estimates every target of r for a message arriving now. dst is
// reused (pass a stack array's slice).
//
// At tens of thousands of requests per second, computing the estimates for
// each (the queue's Stats under its lock, then every target's schedule) is
// wasted work: they are reused for up to etaCacheTTL, as long as few
// messages were appended since (see etaCache.fresh). A route with max_wait
// acts on its estimates (503 backlog_too_long), so it always computes them.
func (r *route) newETAs(dst []targetETA, now time.Time) []targetETA {
	cacheable := r.MaxWait <= 0
	if cacheable {
		if c := r.etaCache.Load(); c != nil && c.fresh(now, r.queue.Appended()) {
			for _, e := range c.etas {
				if e.ok && e.at.Before(now) {
					e.at = now
				}
				dst = append(dst, e)
			}
			return dst
		}
	}
	appended := r.queue.Appended() // before Stats: the estimates reflect at least this many
	st := r.queue.Stats()
	tol := uint64(math.MaxUint64)
	start := len(dst)
	for i := range r.Targets {
		var backlog uint64
		if i < len(st.Targets) {
			ts := st.Targets[i]
			backlog = ts.Pending + uint64(ts.InFlight) + uint64(ts.Retrying)
		}
		at, ok := r.eta(i, now, backlog)
		if ok && cacheable {
			tol = min(tol, r.etaTolerance(i, now, backlog, at))
		}
		dst = append(dst, targetETA{name: r.Targets[i].Name, at: at, ok: ok})
	}
	if cacheable {
		r.etaCache.Store(&etaCache{at: now, appended: appended, tol: tol, etas: append([]targetETA(nil), dst[start:]...)})
	}
	return dst
}

// etaTolerance is how many appends the estimate at of target i (for backlog
// messages ahead, at now) stays good for: 1/etaCacheSlack of the backlog,
// or etaCacheProbe if that many more move it by etaCacheErr at most (a
// target with an unlimited or high rate).
func (r *route) etaTolerance(i int, now time.Time, backlog uint64, at time.Time) uint64 {
	tol := backlog / etaCacheSlack
	if tol < etaCacheProbe {
		if later, ok := r.eta(i, now, backlog+etaCacheProbe); ok && later.Sub(at) <= etaCacheErr {
			tol = etaCacheProbe
		}
	}
	return tol
}

// Reuse of a route's estimates for new messages (route.newETAs).
const (
	etaCacheTTL   = 2 * time.Millisecond
	etaCacheSlack = 256 // appends tolerated: the smallest estimated target's backlog / etaCacheSlack
	etaCacheProbe = 64  // or this many, if they move its estimate by etaCacheErr at most
	etaCacheErr   = time.Millisecond
)

// etaCache is the estimates of a route for a new message, as computed at a
// time. A message's estimate is when the schedule has let the backlog ahead
// of it through; as the targets work through that backlog the estimate stays
// put, and each message appended since pushes it back by one message's turn.
// So the estimates are reused while young (etaCacheTTL: this also bounds how
// late a change of rate or a pause shows) and while the appends since then
// are few enough for every target with an estimate (etaTolerance): at most
// 1/etaCacheSlack of its backlog (an error of ~0.4% of the wait), or
// etaCacheProbe if those move its estimate by etaCacheErr at most. A target
// with a small backlog and a modest rate gets them recomputed after every
// append.
type etaCache struct {
	at       time.Time // when computed (with the monotonic clock reading)
	appended uint64    // the queue's Appended before they were computed
	tol      uint64    // appends after which they are stale
	etas     []targetETA
}

func (c *etaCache) fresh(now time.Time, appended uint64) bool {
	age := now.Sub(c.at)
	return age >= 0 && age < etaCacheTTL && appended-c.appended <= c.tol
}

// statusETA estimates the delivery of a stored message for one target, from
// its status: for a queued message, behind the messages in flight and
// retrying and those pending ahead of it (a message rewound by a shutdown may
// count a few too many); for a retrying one, the first instant at or after
// its next try at which the schedule lets a message through, since due
// retries are fetched before new messages. Other phases have none.
func (r *route) statusETA(i int, seq uint64, st *store.TargetStatus, qs *store.QueueStats, now time.Time) (time.Time, bool) {
	switch st.Phase {
	case store.Queued:
		var ahead uint64
		if i < len(qs.Targets) {
			ts := qs.Targets[i]
			ahead = uint64(ts.InFlight) + uint64(ts.Retrying)
			if cursor := qs.Appended + 1 - ts.Pending; seq > cursor {
				ahead += seq - cursor
			}
		}
		return r.eta(i, now, ahead)
	case store.Retrying:
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
// ETA in etas exceeds now + r.MaxWait (see backlogTooLong).
func overMaxWait(ctx *fasthttp.RequestCtx, r *route, etas []targetETA, now time.Time) bool {
	b, over := backlogTooLong(r, etas, now)
	if !over {
		return false
	}
	b.setRetryAfter(ctx)
	writeJSON(ctx, fasthttp.StatusServiceUnavailable, errorBody{Error: errorDetail{
		Code: "backlog_too_long", Message: b.msg, Target: b.target, ETA: b.eta,
	}})
	return true
}

// backlog is why a new request is refused under max_wait.
type backlog struct {
	msg, target string
	eta         *time.Time    // the target's estimate; nil if unknown
	wait        time.Duration // Retry-After
}

func (b backlog) setRetryAfter(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(int((b.wait+time.Second-1)/time.Second)))
}

// backlogTooLong reports whether some target's ETA in etas exceeds now +
// r.MaxWait, and why. The wait is how long until a new message's ETA falls
// within max_wait as the backlog drains at the rate in force (the ETA of a
// message that waits behind the same backlog stays put while now moves on),
// bounded to [1s, 1h]; 1h if the ETA is unknown.
func backlogTooLong(r *route, etas []targetETA, now time.Time) (backlog, bool) {
	if r.MaxWait <= 0 {
		return backlog{}, false
	}
	deadline := now.Add(r.MaxWait)
	for _, e := range etas {
		if e.ok && !e.at.After(deadline) {
			continue
		}
		b := backlog{target: e.name, wait: maxWaitRetry,
			msg: fmt.Sprintf("target %q of route %q is paused with no end in sight; max_wait is %s; nothing was stored", e.name, r.Name, r.MaxWait)}
		if e.ok {
			b.wait = min(max(e.at.Sub(deadline), minWaitRetry), maxWaitRetry)
			u := e.at.UTC().Truncate(time.Second)
			b.eta = &u
			b.msg = fmt.Sprintf("target %q of route %q would deliver this request at about %s, later than max_wait %s from now; nothing was stored",
				e.name, r.Name, u.Format(time.RFC3339), r.MaxWait)
		}
		return b, true
	}
	return backlog{}, false
}

// storedETAs estimates every target of r for the stored message id, as the
// status API does, with the message's phase for each; a target with no
// estimate (delivered, dead, in flight) is listed without one. If the
// lookup fails, it lists the targets only, with no phase.
func (r *route) storedETAs(dst []targetETA, id store.ID, now time.Time) []targetETA {
	_, sts, err := r.queue.Lookup(id)
	qs := r.queue.Stats()
	for i := range r.Targets {
		e := targetETA{name: r.Targets[i].Name}
		if err == nil && i < len(sts) {
			e.at, e.ok = r.statusETA(i, id.Seq(), &sts[i], &qs, now)
			e.phase = sts[i].Phase
		}
		dst = append(dst, e)
	}
	return dst
}

// repeatStatus sums up a stored message's phases (storedETAs) for the reply
// to a repeated Idempotency-Key: the phase every target shares; else
// "in_progress" while some target has not finished (queued, in flight,
// retrying, parked); else "dead" (delivered to some targets, dead for the
// others). "unknown" if the message could not be read.
func repeatStatus(etas []targetETA) string {
	unfinished := false
	for _, e := range etas {
		switch e.phase {
		case "":
			return "unknown"
		case store.Delivered, store.Dead, store.Purged: // finished (purged: a dead letter an operator dropped)
		default:
			unfinished = true
		}
	}
	if len(etas) == 0 {
		return "unknown"
	}
	same := true
	for _, e := range etas[1:] {
		same = same && e.phase == etas[0].phase
	}
	switch {
	case same:
		return string(etas[0].phase)
	case unfinished:
		return "in_progress"
	}
	return string(store.Dead)
}
