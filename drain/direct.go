package drain

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

// Direct delivery, for spillover routes: a request that is not stored is sent
// to the target at once when the target has room for it now. It shares the
// drainer's token bucket and concurrency slots, so queued and direct requests
// together never exceed the target's rate (plus burst) or concurrency.

// TryDirect takes a token and a concurrency slot for one direct request, if
// both are free now; it never waits. It fails while Run is not running, while
// the drainer is paused (by Pause, SetRate or a window), while the circuit
// breaker is not closed, for a batch target or one with ordering or fairness, and when the bucket or the slots
// are empty. On success the caller must call release once the request is
// over; release frees the slot (the token is spent).
func (d *Drainer) TryDirect() (release func(), ok bool) {
	return d.TryDirectAt(d.now())
}

// TryDirectAt is TryDirect at the time now, as the rate limiter sees it.
func (d *Drainer) TryDirectAt(now time.Time) (release func(), ok bool) {
	if !d.running.Load() || d.target.Batch != nil || d.target.Ordering != nil || d.target.Fairness != nil || BreakerState(d.breakerState.Load()) != BreakerClosed {
		return nil, false
	}
	r, paused, _ := d.rateAt(now)
	if paused {
		return nil, false
	}
	lim := d.lim.Load()
	if lim == nil && !r.Unlimited {
		return nil, false // the run loop has not applied the rate yet
	}
	if !d.takeSlot() {
		return nil, false
	}
	if lim != nil && !lim.AllowN(now, 1) {
		d.slots.Add(-1)
		return nil, false
	}
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			d.slots.Add(-1)
			select { // the run loop may have waited for this slot
			case d.kick <- struct{}{}:
			default:
			}
		}
	}, true
}

// takeSlot takes one of the target's Concurrency slots if one is free.
func (d *Drainer) takeSlot() bool {
	limit := int64(d.target.Concurrency)
	for {
		n := d.slots.Load()
		if n >= limit {
			return false
		}
		if d.slots.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// ErrForwardStatus is returned by Forward for an answer the drainer would
// not count as delivered (a status other than 2xx). Match it with errors.Is.
var ErrForwardStatus = errors.New("drain: target answered with a failure status")

// Forward sends m to the target once, outside the queue, under a slot taken
// with TryDirect, and reads the answer into resp (its body bounded as for
// replays, 16 MiB). The request is built exactly as a replay (method, path
// under the target URL, headers minus hop-by-hop ones, body), with
// X-Sluice-Attempt 1 and X-Sluice-Enqueued-At m.EnqueuedAt; X-Sluice-Id is
// sent only if m.ID is set, and Idempotency-Key only if m.IdempotencyKey or
// m.ID is. The attempt counts in Stats (Attempts, InFlight, Forwarded or
// ForwardFailed) but is recorded nowhere, and it does not move the circuit
// breaker or the adaptive rate.
//
// retry reports whether the drainer would retry this outcome (a connection
// failure, a timeout, or a status in Target.Retry.On): the caller should
// then store m rather than give up. err is nil only for a 2xx answer.
func (d *Drainer) Forward(m *store.Message, resp *fasthttp.Response) (retry bool, err error) {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	buildRequest(req, &d.ep, &store.Delivery{Message: m, Attempt: 1})
	res := d.do(req, resp, -1) // the body is the client's answer: read whole
	if res.err == nil && res.status >= 200 && res.status <= 299 {
		d.forwarded.Add(1)
		return false, nil
	}
	d.fwdFailed.Add(1)
	if res.err != nil {
		return true, res.err // connection failures and timeouts are always worth a retry
	}
	return d.target.Retry.On.Status(res.status), fmt.Errorf("%w: status %d", ErrForwardStatus, res.status)
}
