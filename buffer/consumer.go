package buffer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"maps"
	"os"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Consumer reads one target's view of a queue: what to attempt next, and the
// outcome of each attempt. Fetch and Complete are safe for concurrent use.
type Consumer struct {
	q      *Queue
	target string
	idx    int
	ready  chan struct{}

	fetchMu sync.Mutex // one Fetch at a time, so two never take the same message

	// guarded by q.mu
	next     uint64              // next seq never attempted
	inflight map[uint64]struct{} // fetched, outcome not yet committed
	saved    uint64              // floor last persisted
	retrying int                 // entries in the retry schedule, over all segments
	// hwm is one past the highest seq Fetch has read as new in this run:
	// below it, a message is in flight, finished, or given back by Release
	// (released), and only the last are handed out again. At or above it
	// and at or above Queue.openedNext, a message was never attempted, so
	// reading it needs no look at bbolt.
	hwm      uint64
	released map[uint64]struct{}
	fwd      map[uint64]struct{} // forwarded records appended at or above next (forwarded.go)

	expired   uint64  // messages deleted by the retention before this target finished them, since Open
	rate      float64 // messages finished per second (EWMA), for Retry-After
	rateAt    time.Time
	rateFloor uint64
}

// Consumer returns the consumer of the named target.
func (q *Queue) Consumer(target string) (*Consumer, error) {
	for _, c := range q.consumers {
		if c.target == target {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownTarget, target)
}

// Target returns the consumer's target name.
func (c *Consumer) Target() string { return c.target }

// Ready is signalled (without blocking the writer) after new messages are
// committed. One signal may stand for many messages.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

func (c *Consumer) notify() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// floorLocked is the lowest seq this consumer has not finished. Caller holds q.mu.
func (c *Consumer) floorLocked() uint64 {
	f := c.next
	for seq := range c.inflight {
		if seq < f {
			f = seq
		}
	}
	return f
}

// Fetch returns up to max messages to attempt now: retries that are due at
// now first, then messages never attempted, in seq order. Every returned
// Delivery is in flight until Complete records its outcome. Fetch does not
// block; when it returns nothing, wait on Ready or until NextRetry.
//
// A record that fails its checksum is not returned: it is recorded as dead for
// this target with the reason, and Fetch moves on.
func (c *Consumer) Fetch(max int, now time.Time) ([]*Delivery, error) {
	c.fetchMu.Lock()
	defer c.fetchMu.Unlock()
	q := c.q
	var out []*Delivery
	if err := c.fetchRetries(&out, max, now); err != nil {
		return out, err
	}
	for len(out) < max {
		q.mu.Lock()
		if q.segs == nil {
			q.mu.Unlock()
			return out, ErrClosed
		}
		next := c.next
		if next >= q.nextSeq {
			q.mu.Unlock()
			return out, nil
		}
		seg := q.segmentFor(next)
		if seg == nil { // next fell in a gap (an expired segment): skip to the following one
			for _, s := range q.segs {
				if s.first > next {
					c.next = s.first
					break
				}
			}
			if c.next == next {
				c.next = q.nextSeq
			}
			q.mu.Unlock()
			continue
		}
		q.mu.Unlock()
		got, last, err := c.readNew(seg, next, max-len(out), now)
		out = append(out, got...)
		if errors.Is(err, ErrCorrupt) {
			// The segment's file is damaged past what record checksums catch.
			// Skip the rest of it for this target so the healthy segments
			// are still served; say so loudly.
			q.mu.Lock()
			skipTo := seg.last + 1
			if seg == q.segs[len(q.segs)-1] {
				skipTo = q.nextSeq
			}
			var skipped uint64
			if skipTo > c.next {
				skipped = skipTo - c.next
				c.next = skipTo
			}
			q.damaged += skipped
			q.mu.Unlock()
			q.log.Error("damaged segment: skipping its remaining messages for this target",
				"target", c.target, "segment", segLabel(seg.first), "skipped", skipped, "err", err)
			continue
		}
		if err != nil {
			return out, err
		}
		q.mu.Lock()
		if last >= c.next {
			c.next = last + 1
		}
		q.mu.Unlock()
		if last < next { // nothing readable in seg at next: nothing committed there yet
			return out, nil
		}
	}
	return out, nil
}

// readNew reads up to max never-attempted messages of seg from seq next on.
// last is the highest seq looked at (next-1 if none).
func (c *Consumer) readNew(seg *segment, next uint64, max int, now time.Time) (out []*Delivery, last uint64, err error) {
	q := c.q
	last = next - 1
	var corrupt []uint64
	var forwarded []*journalOutcome    // records of forwarded requests: delivered, not handed out
	end := seg.first + seg.log.count() // messages visible now: seg.first..end-1
	q.mu.Lock()
	hwm := c.hwm
	var released map[uint64]struct{}
	if next < hwm && len(c.released) > 0 {
		released = maps.Clone(c.released)
	}
	q.mu.Unlock()
	// view runs fn in a read transaction of seg when some seq from next on
	// may have a state record written in an earlier run; past that, the
	// messages were never attempted before this run and only the log is
	// read. No copy of the in-flight set is needed (unlike fetchRetries):
	// a seq at or above hwm was never handed out in this run, so it is
	// neither in flight nor finished in it, and below hwm only what
	// Release gave back (not in flight) is handed out again.
	view := func(seg *segment, fn func(*bolt.Tx) error) error { return safeView(seg.db, fn) }
	if next >= q.openedNext {
		view = func(_ *segment, fn func(*bolt.Tx) error) error { return fn(nil) }
	}
	err = view(seg, func(tx *bolt.Tx) error {
		// finished reports whether seq has a state: a cursor walks the
		// state bucket along with seq (one seek per record, not one lookup
		// per seq), and the delivered blocks are read once per block.
		finished := func(uint64) bool { return false }
		if tx != nil {
			cur := tx.Bucket(stateBucket(c.target)).Cursor()
			blocks := newBlockReader(tx, c.target)
			var at uint64 // the first seq with a record at or after the last seek
			sought := false
			finished = func(seq uint64) bool {
				if !sought || at < seq {
					k, _ := cur.Seek(seqKey(seq))
					at, sought = ^uint64(0), true
					if len(k) == 8 {
						at = binary.BigEndian.Uint64(k)
					}
				}
				return at == seq || blocks.get(seq) != nil
			}
		}
		// The frames ahead are read with one pread; a seq among them that
		// is skipped costs its bytes only.
		_, recs, err := seg.log.readSpan(next, min(max, int(end-min(next, end))), nil)
		if err != nil {
			return err
		}
		var buf []byte
		for seq := next; seq < end && len(out) < max; seq++ {
			last = seq
			if seq < hwm {
				// Read in this run already: only a message given back
				// without an outcome is handed out again.
				if _, ok := released[seq]; !ok {
					continue
				}
			} else if seq < q.openedNext && finished(seq) {
				continue // finished before a restart; its retry, if any, is in the schedule
			}
			var rec []byte
			var err error
			shared := false // rec is in the span read for this Fetch alone: the body may alias it
			if i := seq - next; i < uint64(len(recs)) && recs[i] != nil {
				rec, shared = recs[i], true
			} else {
				if buf, err = seg.log.read(seq, buf[:0]); errors.Is(err, ErrClosed) {
					return err
				}
				rec = buf
			}
			var m *Message
			switch {
			case err == nil && shared:
				m, err = store.DecodeRecordShared(rec)
			case err == nil:
				m, err = DecodeRecord(rec)
			}
			if err != nil {
				q.log.Error("damaged record; marking it dead for this target", "target", c.target, "seq", seq, "err", err)
				corrupt = append(corrupt, seq)
				continue
			}
			if status, ok := m.Forwarded(); ok {
				forwarded = append(forwarded, &journalOutcome{seq: seq, target: c.idx, state: forwardedState(m, status), waiter: waiter{done: make(chan struct{}, 1)}})
				continue
			}
			m.Seq = seq
			m.ID = store.NewID(seq, m.ID.Tag())
			out = append(out, &Delivery{Message: m, Attempt: 1})
		}
		return nil
	})
	if err != nil {
		return nil, next - 1, closedErr(fmt.Errorf("read segment %s: %w", segmentName(seg.first), err))
	}
	q.mu.Lock()
	for _, d := range out {
		c.inflight[d.Seq] = struct{}{}
		delete(c.released, d.Seq)
	}
	for _, seq := range corrupt {
		c.inflight[seq] = struct{}{}
		delete(c.released, seq)
	}
	for _, r := range forwarded {
		c.inflight[r.seq] = struct{}{}
		delete(c.released, r.seq)
	}
	if last+1 > c.hwm {
		c.hwm = last + 1
	}
	q.mu.Unlock()
	for _, r := range forwarded {
		if err := q.complete(context.Background(), r, false); err != nil {
			return out, last, err
		}
	}
	for _, seq := range corrupt {
		st := &State{Phase: Dead, History: []Attempt{{At: now, Error: "damaged record: checksum or format check failed"}}}
		s := &stateChange{seq: seq, target: c.idx, state: st, waiter: waiter{done: make(chan struct{}, 1)}}
		if err := q.complete(context.Background(), s, false); err != nil {
			return out, last, err
		}
	}
	return out, last, nil
}

// fetchRetries appends due retries, oldest due first.
func (c *Consumer) fetchRetries(out *[]*Delivery, max int, now time.Time) error {
	q := c.q
	segs := c.segmentsWith(func(s *segment) bool { return s.retries[c.idx] > 0 })
	nowKey := retryKey(now, ^uint64(0))
	var unloadable []retryRef
	for _, seg := range segs {
		if len(*out) >= max {
			return nil
		}
		// Read in the transaction, claimed after it: a read transaction
		// never waits for q.mu (doc.go, "Lock order").
		type due struct {
			d   *Delivery
			ref retryRef // d nil: damaged
		}
		var found []due
		err := c.snapshotView(seg, func(tx *bolt.Tx, busyAtStart map[uint64]struct{}) error {
			sb := tx.Bucket(stateBucket(c.target))
			cur := tx.Bucket(retryBucket(c.target)).Cursor()
			for k, _ := cur.First(); k != nil && len(*out)+len(found) < max; k, _ = cur.Next() {
				if string(k) > string(nowKey) {
					break
				}
				at, seq := parseRetryKey(k)
				if _, busy := busyAtStart[seq]; busy {
					continue
				}
				d, err := c.load(seg, sb, seq)
				found = append(found, due{d, retryRef{seq, at, err}})
			}
			return nil
		})
		q.mu.Lock()
		for _, f := range found {
			if _, busy := c.inflight[f.ref.seq]; busy {
				continue
			}
			c.inflight[f.ref.seq] = struct{}{} // claim it; Fetch is serialised so no one else can
			if f.ref.err != nil {
				// Keep it claimed and mark it dead, so it neither spins nor blocks.
				unloadable = append(unloadable, f.ref)
				continue
			}
			*out = append(*out, f.d)
		}
		q.mu.Unlock()
		if err != nil {
			return closedErr(err)
		}
	}
	for _, u := range unloadable {
		q.log.Error("damaged retry; marking it dead for this target", "target", c.target, "seq", u.seq, "err", u.err)
	}
	for _, u := range unloadable {
		st := &State{Phase: Dead, History: []Attempt{{At: now, Error: "damaged record: " + u.err.Error()}}}
		s := &stateChange{seq: u.seq, target: c.idx, state: st, oldRetry: u.at, waiter: waiter{done: make(chan struct{}, 1)}}
		if err := q.complete(context.Background(), s, false); err != nil {
			return err
		}
	}
	return nil
}

type retryRef struct {
	seq uint64
	at  time.Time
	err error
}

// closedErr maps bbolt's "database not open" (a segment closed under a
// reader by Close) to ErrClosed, so callers can match it.
func closedErr(err error) error {
	if errors.Is(err, bolt.ErrDatabaseNotOpen) || errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

func (c *Consumer) load(seg *segment, sb *bolt.Bucket, seq uint64) (*Delivery, error) {
	v, err := seg.log.read(seq, nil)
	if err != nil {
		return nil, err
	}
	m, err := DecodeRecord(v)
	if err != nil {
		return nil, err
	}
	m.Seq, m.ID = seq, store.NewID(seq, m.ID.Tag())
	d := &Delivery{Message: m, Attempt: 1}
	if sv := sb.Get(seqKey(seq)); sv != nil {
		st, err := decodeState(sv)
		if err != nil {
			return nil, err
		}
		d.Prior = st
		d.Attempt = st.Attempts + 1
	}
	return d, nil
}

// NextRetry returns when the earliest retry not in flight is due.
func (c *Consumer) NextRetry() (time.Time, bool) {
	segs := c.segmentsWith(func(s *segment) bool { return s.retries[c.idx] > 0 })
	if len(segs) == 0 {
		return time.Time{}, false
	}
	// A copy of the in-flight set, taken before the transactions: a read
	// transaction never waits for q.mu (doc.go, "Lock order"). One that went in
	// flight since is taken as due (the drainer's Fetch then finds less);
	// one that came back is seen at the next call.
	busyNow := c.inflightCopy()
	var best time.Time
	for _, seg := range segs {
		safeView(seg.db, func(tx *bolt.Tx) error {
			cur := tx.Bucket(retryBucket(c.target)).Cursor()
			for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
				at, seq := parseRetryKey(k)
				if _, busy := busyNow[seq]; busy {
					continue
				}
				if best.IsZero() || at.Before(best) {
					best = at
				}
				break
			}
			return nil
		})
	}
	return best, !best.IsZero()
}

// Complete records the outcome of the attempt d and returns once it is
// committed (durable with SyncAlways). If it fails, the message stays in
// flight in memory and is attempted again after a restart.
func (c *Consumer) Complete(ctx context.Context, d *Delivery, out Outcome) error {
	st := &State{}
	if err := outcomeState(st, d, out); err != nil {
		return err
	}
	w := waiter{done: make(chan struct{}, 1)}
	if firstDelivered(d, out) {
		return c.q.complete(ctx, &journalOutcome{waiter: w, seq: d.Seq, target: c.idx, state: st}, true)
	}
	s := &stateChange{waiter: w}
	c.outcomeChange(s, st, d)
	return c.q.complete(ctx, s, true)
}

// CompleteBatch is Complete for many attempts: every outcome is handed to
// the writer before any is waited for, so they share its commits and the
// caller wakes once. errs[i] is the outcome for ds[i].
func (c *Consumer) CompleteBatch(ctx context.Context, ds []*Delivery, outs []Outcome) []error {
	errs := make([]error, len(ds))
	// One hand-off for the batch: its changes are the parts of one
	// outcomeBatch, each kind in one slice of a scratch the batch
	// borrows (the writer is done with every part once do returns).
	nFirst := 0
	for i, d := range ds {
		if firstDelivered(d, outs[i]) {
			nFirst++
		}
	}
	sc := completeScratches.Get().(*completeScratch)
	firsts := grown(sc.firsts, nFirst)
	others := grown(sc.others, len(ds)-nFirst)
	sts := grown(sc.sts, len(ds))[:len(ds)]
	parts := grown(sc.parts, len(ds)) // for each ds[i] without an error yet, in order
	defer func() {
		sc.firsts, sc.others, sc.sts, sc.parts = firsts, others, sts, parts
		sc.put()
	}()
	for i, d := range ds {
		if err := outcomeState(&sts[i], d, outs[i]); err != nil {
			errs[i] = err
			continue
		}
		if firstDelivered(d, outs[i]) {
			firsts = append(firsts, journalOutcome{seq: d.Seq, target: c.idx, state: &sts[i]})
			parts = append(parts, &firsts[len(firsts)-1])
		} else {
			others = append(others, stateChange{})
			s := &others[len(others)-1]
			c.outcomeChange(s, &sts[i], d)
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return errs
	}
	batch := &outcomeBatch{parts: parts, waiter: waiter{done: make(chan struct{}, 1)}}
	if err := c.q.do(ctx, batch); err != nil { // hand's: nothing was handed over
		for i := range ds {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	k := 0
	for i := range ds {
		if errs[i] == nil {
			errs[i] = parts[k].reply().err
			k++
		}
	}
	return errs
}

// completeScratch is what one CompleteBatch call builds its changes in,
// kept between calls: at full speed a batch of outcomes otherwise
// allocates ~160 bytes a message for structures the writer drops as soon
// as it has answered.
type completeScratch struct {
	firsts []journalOutcome
	others []stateChange
	sts    []State
	parts  []change
}

var completeScratches = sync.Pool{New: func() any { return new(completeScratch) }}

// put clears what the call used of the scratch (it points to messages,
// responses, channels) and gives it back; its slices hold the call's
// elements, and beyond them only what earlier puts cleared.
func (sc *completeScratch) put() {
	clear(sc.firsts)
	clear(sc.others)
	clear(sc.sts)
	clear(sc.parts)
	sc.firsts, sc.others, sc.sts, sc.parts = sc.firsts[:0], sc.others[:0], sc.sts[:0], sc.parts[:0]
	completeScratches.Put(sc)
}

// grown returns s emptied, with room for n elements: appending up to n
// never moves it, so pointers into it stay valid.
func grown[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, 0, n)
	}
	return s[:0]
}

// firstDelivered reports whether out, for d, is its message's first
// outcome for the target and Delivered: it touches no index (no retry
// entry to remove, no dead letter to list), so the journal takes it.
func firstDelivered(d *Delivery, out Outcome) bool {
	return d.Prior == nil && out.Phase == Delivered
}

// outcomeChange makes s the state change that records st, the outcome of
// the attempt d (not a first Delivered one: see firstDelivered).
func (c *Consumer) outcomeChange(s *stateChange, st *State, d *Delivery) {
	s.seq, s.target, s.state = d.Seq, c.idx, st
	if d.Prior != nil && d.Prior.Phase == Retrying {
		s.oldRetry = d.Prior.NextTry
	}
}

// outcomeState sets st to the state that records out for the attempt d.
func outcomeState(st *State, d *Delivery, out Outcome) error {
	switch out.Phase {
	case Delivered, Dead:
	case Retrying:
		if out.NextTry.IsZero() {
			return fmt.Errorf("buffer: Complete: retrying without NextTry")
		}
	default:
		return fmt.Errorf("buffer: Complete: invalid phase %q", out.Phase)
	}
	*st = State{Phase: out.Phase, Attempts: d.Attempt, Response: out.Response}
	if out.Phase == Retrying {
		st.NextTry = out.NextTry
	}
	out.Attempt.N = d.Attempt
	if d.Prior != nil {
		st.History = append(st.History, d.Prior.History...)
		st.History = append(st.History, out.Attempt)
	} else {
		st.History = []Attempt{out.Attempt}
	}
	if len(st.History) > maxHistory {
		st.History = st.History[len(st.History)-maxHistory:]
	}
	return nil
}

// Release gives a fetched delivery back without an outcome (for example at
// shutdown, or when the drainer fetched more than it could start): it stays
// due and will be fetched again.
func (c *Consumer) Release(d *Delivery) {
	c.fetchMu.Lock() // a Fetch in progress must not overwrite the rewind
	defer c.fetchMu.Unlock()
	q := c.q
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(c.inflight, d.Seq)
	if d.Prior == nil {
		// A first attempt: rewind so the cursor reads it again.
		c.released[d.Seq] = struct{}{}
		c.next = min(c.next, d.Seq)
	}
}

// changeState makes a state change of seq that the caller did not fetch
// (Unpark, Revive, Purge: the message is parked or dead, not in flight).
// The writer ends the in-flight claim of every state change it commits, on
// the understanding that the one asking holds it (as Complete and Park do).
// So the change is made holding a claim: taken here, before build reads the
// state and makes the change, and ended by the writer after the commit. A
// Fetch that sees the message due between that commit and the writer's
// bookkeeping finds it claimed and skips it; without the claim, it would
// take the message and the writer would then drop that Fetch's claim, so
// the next Fetch would hand the message out again while it is under way.
// build's error (ErrNotFound: not in the state the change starts from) is
// returned as it is; if seq is in that state but in flight already (its
// holder's commit is not finished), it fails without changing anything.
func (c *Consumer) changeState(ctx context.Context, seq uint64, build func() (*stateChange, error)) error {
	return c.changeStates(ctx, []uint64{seq}, func(uint64) (*stateChange, error) { return build() })[0]
}

// changeStates is changeState for several messages (distinct seqs): every
// claim is taken and every change built first, then the changes are
// handed to the writer back to back, so that they share its commits.
// errs[i] is the outcome for seqs[i].
func (c *Consumer) changeStates(ctx context.Context, seqs []uint64, build func(seq uint64) (*stateChange, error)) (errs []error) {
	q := c.q
	errs = make([]error, len(seqs))
	busy := make([]bool, len(seqs))
	q.mu.Lock()
	for i, seq := range seqs {
		if _, busy[i] = c.inflight[seq]; !busy[i] {
			c.inflight[seq] = struct{}{}
		}
	}
	q.mu.Unlock()
	rs := make([]*stateChange, len(seqs))
	for i, seq := range seqs {
		r, err := build(seq)
		switch {
		case busy[i] && err == nil:
			errs[i] = fmt.Errorf("buffer: seq %d is in flight for target %q; try again", seq, c.target)
		case err != nil:
			errs[i] = err
		default:
			rs[i] = r
		}
	}
	taken := make([]bool, len(seqs)) // handed to the writer
	for i, r := range rs {
		if r == nil {
			continue
		}
		if err := q.hand(ctx, r); err != nil {
			errs[i] = err
		} else {
			taken[i] = true
		}
	}
	for i, r := range rs {
		if taken[i] {
			<-r.done // hand guarantees an answer, even across Close
			errs[i] = r.err
		}
	}
	q.mu.Lock()
	for i, seq := range seqs {
		if busy[i] || (taken[i] && (errs[i] == nil || errors.Is(errs[i], ErrNotFound))) {
			continue // not ours; or the writer took the change and ended the claim
		}
		// The change was not asked for, or the writer left it in flight
		// (failed write): the claim is still ours, and no one else can
		// have taken seq.
		delete(c.inflight, seq)
	}
	q.mu.Unlock()
	return errs
}

// Cursor returns the seq of the next message this consumer has never
// fetched: every message below it has been fetched at least once since the
// queue was opened, or finished before.
func (c *Consumer) Cursor() uint64 {
	c.q.mu.Lock()
	defer c.q.mu.Unlock()
	return c.next
}

// inflightCopy returns a copy of the consumer's in-flight set, for code in
// a read transaction, which must not wait for q.mu (doc.go, "Lock order").
func (c *Consumer) inflightCopy() map[uint64]struct{} {
	c.q.mu.Lock()
	defer c.q.mu.Unlock()
	return maps.Clone(c.inflight)
}

// snapshotView runs fn in a read transaction of seg together with a copy of
// the in-flight set taken at the same instant (under q.mu, where the writer
// removes completed messages from it only after their commit). Checking a
// candidate against that copy, not against the live set, is what keeps a
// snapshot from handing out a message completed while it was being read:
// such a message was still in flight when the snapshot began.
func (c *Consumer) snapshotView(seg *segment, fn func(*bolt.Tx, map[uint64]struct{}) error) (err error) {
	q := c.q
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: segment read failed: %v", ErrCorrupt, p)
		}
	}()
	q.mu.Lock()
	tx, err := seg.db.Begin(false)
	busy := maps.Clone(c.inflight)
	q.mu.Unlock()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	return fn(tx, busy)
}

// segmentsWith returns, under q.mu, the segments for which has is true (for
// example, those with entries in this target's retry schedule).
func (c *Consumer) segmentsWith(has func(*segment) bool) []*segment {
	c.q.mu.Lock()
	defer c.q.mu.Unlock()
	var segs []*segment
	for _, s := range c.q.segs {
		if has(s) {
			segs = append(segs, s)
		}
	}
	return segs
}
