package drain

import "time"

// plainFeeder is the feeder of a plain target: one message, one request.
// With no rate limit and a closed breaker it keeps the chain (chain.go)
// open, so that workers start the next message themselves; otherwise each
// round fetches for the slots and tokens free, and holds nothing between
// rounds.
type plainFeeder struct {
	r *runner

	// The chain: fetched messages that workers start themselves. The
	// runner's ch points to it.
	ch         chain
	chainOpen  bool      // the loop's view of ch.open
	chainGen   uint64    // and of ch.gen
	chainUntil time.Time // and of ch.until
}

func newPlainFeeder(r *runner) *plainFeeder {
	f := &plainFeeder{r: r}
	r.ch = &f.ch
	return f
}

// prepare opens the chain when nothing but the slots limits sending, and
// closes it (giving its messages back) at any change: the rate, the
// breaker, a control call, or the rate's next change by the clock.
func (f *plainFeeder) prepare(t turn) {
	if t.fast != f.chainOpen || (t.fast && (f.chainGen != t.gen || !f.chainUntil.Equal(t.until))) {
		f.setChain(t.fast, t.gen, t.until)
	}
}

func (f *plainFeeder) holding() bool { return f.chainOpen && f.ch.held() > 0 }

func (f *plainFeeder) round(t turn) round {
	switch {
	case f.chainOpen:
		return f.chainRound(t.now, t.gen, max(t.free, 0))
	case t.free <= 0:
		return round{}
	}
	return f.plainRound(t.now, t.gen, t.free)
}

func (f *plainFeeder) release() {
	if f.chainOpen {
		f.setChain(false, 0, time.Time{})
	}
}

// plainRound is the round while the chain is closed: a rate limit, or a
// breaker not closed (half-open: one probe at a time). It fetches for the
// slots and tokens free, no more, and starts them.
func (f *plainFeeder) plainRound(now time.Time, gen uint64, free int) round {
	return f.r.fetchRound(now, gen, free, nil)
}
