package drain

import (
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// Feeders: what the run loop asks of a target's delivery mode.
//
// The run loop (runner.loop) owns what every mode shares: the rate and
// its limiter, the breaker, the concurrency slots, the timers, the events
// of attempts, the safety poll and control calls. What differs between
// modes, which messages to fetch, what to hold between rounds and how to
// start an attempt, is a feeder's, one per mode, chosen once when Run
// starts (newFeeder):
//
//   - plainFeeder: one message, one request; with no rate limit, the chain
//     (chain.go) keeps the run loop off the path of each message.
//   - batchFeeder: one request carries a batch (batch.go).
//   - orderedFeeder: one message at a time per key (ordering.go).
//   - fairFeeder: round robin between keys (fairness.go).
//
// Each feeder owns the state of its mode and is called by the run loop's
// goroutine only (workers reach the chain through its lock).
type feeder interface {
	// prepare is called at every wake-up while something may be sent,
	// once the rate and the breaker are up to date, before the round.
	prepare(t turn)
	// holding reports whether the feeder holds fetched messages that are
	// worth a round though the last Fetch came back short.
	holding() bool
	// round fetches for the free slots and tokens, starts attempts and
	// tells the loop what to do next. t.free may be 0 or less: a feeder
	// may still fill what it holds.
	round(t turn) round
	// release gives every fetched message the feeder holds back to the
	// store, unsent: called at every wake-up while nothing may be sent
	// (paused, the breaker open or probing), and when Run stops fetching.
	release()
}

// A watcher is a feeder that also follows the outcomes, the retry schedule
// and the clock (ordering: a key's owner hands the key on when its outcome
// is final). newFeeder's caller checks for it once.
type watcher interface {
	// recorded is told of every outcome of a message: recorded or not
	// (ok), final (delivered or dead) or not; stopping: Run is shutting
	// down.
	recorded(dl *store.Delivery, ok, final, stopping bool)
	// retryIdle is called when the loop, idle, has asked NextRetry;
	// pending is its answer. It returns false to be asked again at the
	// next idle turn (it could not act on it).
	retryIdle(pending bool) bool
	// tick is called at the end of every turn that goes on to wait for
	// news (not after a round that asks to go round again at once, nor
	// after a fetch error). woke: something became ready, go round again
	// at once; wake: when to look again (zero: no need).
	tick(now time.Time) (woke bool, wake time.Time)
}

// turn is one wake-up of the run loop, as its feeder sees it.
type turn struct {
	now  time.Time
	gen  uint64 // Drainer.control, read before the rate was applied
	idle bool   // the last Fetch came back short and no news came since
	free int    // slots the round may fill (the breaker's allowance included); may be <= 0
	// fast: nothing but the slots limits sending (the rate unlimited, the
	// breaker closed); until: when the rate in force may change by the
	// clock (zero: never).
	fast  bool
	until time.Time
}

// round is what one round of a feeder tells the run loop.
type round struct {
	fetched bool      // Fetch was called
	short   bool      // it returned less than asked: the queue is drained, wait for news
	again   bool      // go round again at once, as after news (something became ready)
	more    bool      // go round again at once: there may be more to start
	wake    time.Time // when to look again (a token, a batch's max_wait); zero if no need
	err     error     // fetching failed: pause, then try again
	errMsg  string    // the log line for err; empty for the usual one
}

// newFeeder returns the feeder of the target's delivery mode for one Run.
func newFeeder(r *runner) feeder {
	t := &r.d.target
	switch {
	case t.Fairness != nil:
		return newFairFeeder(r)
	case t.Ordering != nil:
		return newOrderedFeeder(r)
	case t.Batch != nil:
		return &batchFeeder{r: r}
	default:
		return newPlainFeeder(r)
	}
}
