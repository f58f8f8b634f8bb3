package drain

import "time"

// plainFeeder is the feeder of a plain target: one message, one request.
// With no rate limit and a closed breaker it keeps the chain (chain.go)
// open, so that workers start the next message themselves.
type plainFeeder struct{ r *runner }

func (f *plainFeeder) prepare(t *turn) {
	r := f.r
	if t.fast != r.chainOpen || (t.fast && (r.chainGen != t.gen || !r.chainUntil.Equal(t.until))) {
		r.setChain(t.fast, t.gen, t.until)
	}
}

func (f *plainFeeder) holding() bool { return f.r.chainOpen && f.r.ch.held() > 0 }

func (f *plainFeeder) round(t *turn) round {
	switch {
	case f.r.chainOpen:
		return f.r.chainRound(t.now, t.gen, max(t.free, 0))
	case t.free <= 0:
		return round{}
	}
	return f.r.plainRound(t.now, t.gen, t.free)
}

func (f *plainFeeder) release() {
	if f.r.chainOpen {
		f.r.setChain(false, 0, time.Time{})
	}
	f.r.releasePending()
}
