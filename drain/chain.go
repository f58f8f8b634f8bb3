package drain

import (
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// The chain: how a plain target with no rate limit keeps every slot busy
// without the run loop on the path of each message.
//
// Elsewhere a slot goes back to the run loop when its HTTP call ends, and
// the loop, once scheduled, hands it the next message: at full speed the
// loop's turn on a CPU, not the downstream, sets the pace. When the
// target is plain (no batch, ordering or fairness), its rate unlimited,
// the breaker closed and no control call has come in since the loop last
// looked, the plain feeder (plain.go, on the loop's goroutine) keeps up to
// Concurrency fetched messages in the chain instead, and a worker whose
// attempt succeeded keeps its slot and takes the next message from the
// chain itself. It still tells the loop of the attempt (event.chained),
// which counts it and feeds the breaker. Workers of the other modes have
// no chain (runner.ch is nil).
//
// Whenever any of those conditions stops holding, the feeder closes the
// chain (prepare, or release while nothing may be sent) and gives its
// messages back to the store before the loop does anything else, under
// the chain's lock, so no worker takes one after that. A failed attempt
// never chains: its slot goes back through the loop, which sees the
// failure first.
type chain struct {
	mu   sync.Mutex
	open bool
	gen  uint64 // Drainer.control when the loop opened it
	// until is when the rate in force may change by the clock (a window
	// opens or closes; zero: never): the chain ends there by itself,
	// before the loop has looked.
	until time.Time
	q     []*store.Delivery // fetched, in flight in the store, not started
}

// chainDepth is how many slots' worth (Concurrency) of fetched messages
// the chain holds at most. One slot's worth ran dry in a quarter of the
// attempts at full speed (the run loop, which tops it up, was not
// scheduled in time); three run dry in ~5% (100k 1 KiB messages to
// bench/noop at concurrency 64).
const chainDepth = 3

// take returns the next message for a worker whose attempt just ended
// well, or nil. control is the drainer's control counter now.
func (c *chain) take(control uint64, now time.Time) *store.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open || c.gen != control || len(c.q) == 0 || (!c.until.IsZero() && !now.Before(c.until)) {
		return nil
	}
	dl := c.q[0]
	c.q[0] = nil
	c.q = c.q[1:]
	return dl
}

// setOpen opens the chain at gen until until, or closes it and returns
// what it held (for the caller to release).
func (c *chain) setOpen(open bool, gen uint64, until time.Time) []*store.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open, c.gen, c.until = open, gen, until
	if open {
		return nil
	}
	held := c.q
	c.q = nil
	return held
}

// held is how many messages the chain holds.
func (c *chain) held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.q)
}

// room is how many messages the chain can take to be full at max.
func (c *chain) room(max int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open {
		return 0
	}
	return max - len(c.q)
}

// add appends fetched messages to the chain and returns none; a closed
// chain takes none and returns them all.
func (c *chain) add(ds []*store.Delivery) []*store.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open {
		return ds
	}
	c.q = append(c.q, ds...)
	return nil
}

// next removes and returns up to n messages for the loop to start itself.
func (c *chain) next(n int) []*store.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	n = min(n, len(c.q))
	out := make([]*store.Delivery, n)
	copy(out, c.q[:n])
	clear(c.q[:n])
	c.q = c.q[n:]
	return out
}

// setChain opens the chain at gen, or closes it and gives what it held
// back to the store. Run loop only.
func (f *plainFeeder) setChain(open bool, gen uint64, until time.Time) {
	for _, dl := range f.ch.setOpen(open, gen, until) {
		f.r.d.src.Release(dl)
	}
	f.chainOpen, f.chainGen, f.chainUntil = open, gen, until
}

// chainRound is the plain feeder's round while the chain is open: it
// starts attempts on the free slots, from the chain first, and fetches
// what the slots and the chain lack, at most Concurrency at once. The chain
// is topped up once a quarter of a slot's worth has been taken, so that workers find it full and fetches stay
// large. It reports whether it fetched and whether the store had fewer
// messages than asked for (the queue is drained: wait for news), or its
// error.
func (f *plainFeeder) chainRound(now time.Time, gen uint64, free int) (rd round) {
	d := f.r.d
	conc := d.target.Concurrency
	starts := f.ch.next(free)
	need := free - len(starts)
	if room := f.ch.room(chainDepth * conc); need > 0 || room >= max(1, conc/4) {
		need = min(need+room, conc) // one Fetch at most Concurrency, as elsewhere
		got, err := d.src.Fetch(need, now)
		rd.fetched, rd.short, rd.err = true, len(got) < need, err
		n := min(free-len(starts), len(got))
		starts = append(starts, got[:n]...)
		for _, dl := range f.ch.add(got[n:]) { // none: the chain is open
			d.src.Release(dl)
		}
	}
	f.r.startAll(starts, now, gen, nil)
	return rd
}
