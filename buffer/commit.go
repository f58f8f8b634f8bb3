package buffer

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The writer's changes. Everything that writes a queue's files reaches the
// writer goroutine as a change, and every kind of change is its own type
// with its own fields:
//
//	appendChange      one record for the head's log, with an optional
//	                  idempotency key (Append, AppendDraft, AppendForwarded)
//	appendManyChange  records that are stored or refused together (AppendDrafts)
//	journalOutcome    a message's first outcome for a target, Delivered: a
//	                  frame in the outcome journal (Complete, forwarded records)
//	stateChange       any other state of one message for one target, with
//	                  its side effects on the retry schedule, the dead
//	                  letters and the parked index: a bbolt transaction
//	outcomeBatch      outcomes answered together (CompleteBatch)
//	findKeyChange     a look-up of an idempotency key in the head (forwarded.go)
//
// A commit takes whatever changes are waiting and goes through the same
// phases for all of them (see commit): collect (each change files itself,
// or its parts, under the phase that writes it), the writes (one write(2)
// of the log for every append, one of the journal for every outcome, their
// fdatasyncs overlapping; then one bbolt transaction per segment for the
// state changes), settle (what the commit changes in memory, under q.mu,
// all at once) and answer.

// change is one unit of work for the writer goroutine.
type change interface {
	// collect files the change (or its parts) into the commit c, or
	// fails it at once (its message expired). Writer, under q.mu.
	collect(q *Queue, c *commitSet)
	// settle makes in memory what the commit made durable: in-flight
	// claims end, pending outcomes and counts are updated. Writer, under
	// q.mu, once every write of the commit is done.
	settle(q *Queue)
	// reply is where the caller waits for the answer.
	reply() *waiter
}

// waiter is how a change is answered: the writer sets err and sends on
// done once (capacity 1, so the send never blocks). A change that is a
// part of another (appendManyChange, outcomeBatch) is answered through
// that one and has no done.
type waiter struct {
	err  error
	done chan struct{}
}

func (w *waiter) reply() *waiter { return w }

// commitSet is one commit's changes, filed by the phase that writes them.
// Writer only; reused from commit to commit.
type commitSet struct {
	head     *segment
	first    uint64                      // seq of the commit's first append
	apps     []*appendChange             // to the head's log, in order
	outcomes []*journalOutcome           // to the outcome journal
	bySeg    map[*segment][]*stateChange // to bbolt, by segment
	finds    []*findKeyChange            // answered after the appends
}

func (c *commitSet) reset() {
	clear(c.apps)
	clear(c.outcomes)
	clear(c.finds)
	*c = commitSet{apps: c.apps[:0], outcomes: c.outcomes[:0], finds: c.finds[:0]}
}

// commit writes one batch of changes: collect, the appends and first
// Delivered outcomes (one write each, their fsyncs overlapping), the
// other state changes (one bbolt transaction per segment), the key
// look-ups, then settle and answer. A state change leaves the in-flight
// set only in settle, once committed (or failed for good), so a persisted
// floor never passes it early.
func (q *Queue) commit(batch []change, dirty map[*segment]bool) {
	c := &q.cs
	defer c.reset()
	q.mu.Lock()
	c.head, c.first = q.segs[len(q.segs)-1], q.nextSeq
	for _, ch := range batch {
		ch.collect(q, c)
	}
	q.mu.Unlock()

	appErr := q.admitAppends(c, dirty) // before the journal write: retention may checkpoint
	waitOutcomes := q.writeJournalOutcomes(c)
	q.commitAppends(c, appErr, dirty)
	waitOutcomes()
	q.commitStates(c, dirty)
	for _, f := range c.finds {
		f.run(q)
	}

	q.mu.Lock()
	for _, ch := range batch {
		ch.settle(q)
	}
	head := c.head
	roll := head.log.end >= q.cfg.SegmentBytes && head.last >= head.first && head == q.segs[len(q.segs)-1]
	q.mu.Unlock()

	for _, ch := range batch {
		ch.reply().done <- struct{}{} // capacity 1; never blocks
	}
	if len(c.apps) > 0 {
		for _, cons := range q.consumers {
			cons.notify()
		}
	}
	if roll {
		q.roll(dirty)
	}
	if q.pending.due() {
		q.checkpoint()
	}
}

// admitAppends asks admission control whether the commit's appends may be
// stored. Refused for space, it frees what every target has finished now,
// not at the next retention tick, and asks again.
func (q *Queue) admitAppends(c *commitSet, dirty map[*segment]bool) error {
	if len(c.apps) == 0 {
		return nil
	}
	err := q.store.admit()
	if err != nil && time.Since(q.lastPressure) > 50*time.Millisecond {
		q.lastPressure = time.Now()
		q.enforceRetention(dirty)
		err = q.store.admit()
	}
	return err
}

// commitAppends writes the commit's appends (appendBatch), unless admission
// refused them (err), and sets each one's answer.
func (q *Queue) commitAppends(c *commitSet, err error, dirty map[*segment]bool) {
	if len(c.apps) == 0 {
		return
	}
	if err == nil {
		if err = q.appendBatch(c.head, c.first, c.apps, dirty); err != nil {
			q.failedCommits.Add(1)
			q.refused.Add(uint64(len(c.apps)))
			q.commitFails.failed(q.log, "append commit failed; refusing its requests", err, len(c.apps))
			err = fmt.Errorf("%w: %w", ErrIO, err)
		} else {
			q.commitFails.recovered(q.log, "append commits succeed again")
		}
	}
	for _, a := range c.apps {
		a.err = err
		a.rec = nil
	}
}

// appendChange appends one record to the head's log.
type appendChange struct {
	waiter
	rec []byte // the encoded record; nil once written
	seq uint64 // set by the writer
	tag [8]byte
	fwd bool // a forwarded request's record (forwarded.go)

	// With an idempotency key:
	key          [16]byte // hash of the key
	hasKey       bool
	checkedBelow uint64   // segments starting below this were searched by the caller
	fp           [16]byte // the request's store.Fingerprint
	dup          bool     // set by the writer: seq and tag name the first message
	mismatch     bool     // set by the writer: the key's first message was another request
}

func (a *appendChange) collect(_ *Queue, c *commitSet) { c.apps = append(c.apps, a) }

// settle: appendBatch makes an append visible as it indexes it.
func (a *appendChange) settle(*Queue) {}

// repeats marks a, whose key names t, as a duplicate of t's message, or as
// a mismatch if a is another request.
func (a *appendChange) repeats(t keyTarget) {
	if !sameRequest(t.fp, a.fp) {
		a.mismatch = true
		return
	}
	a.dup, a.seq, a.tag = true, t.seq, t.tag
}

// appendChanges are pooled: one per accepted HTTP request otherwise.
var appendPool = sync.Pool{New: func() any { return &appendChange{waiter: waiter{done: make(chan struct{}, 1)}} }}

func getAppend() *appendChange { return appendPool.Get().(*appendChange) }

// putAppend recycles a; only once the writer is done with it.
func putAppend(a *appendChange) {
	done := a.done
	*a = appendChange{waiter: waiter{done: done}}
	appendPool.Put(a)
}

// appendManyChange appends records in one commit, with one write: they are
// stored together or refused together, and answered together.
type appendManyChange struct {
	waiter // err: the parts'
	parts  []*appendChange
}

func (m *appendManyChange) collect(_ *Queue, c *commitSet) { c.apps = append(c.apps, m.parts...) }

// settle gives m the error its parts share.
func (m *appendManyChange) settle(*Queue) { m.err = m.parts[0].err }

// journalOutcome records a message's first outcome for a target when it
// is Delivered: no retry entry to remove, no dead letter to list, so it
// is a frame in the outcome journal (journal.go), kept in Queue.pending
// until a checkpoint writes it into its segment's bbolt file.
type journalOutcome struct {
	waiter
	seq    uint64
	target int
	state  *State

	seg *segment // set by the writer: the segment that holds seq
	rec []byte   // set by the writer: the encoded state, in the journal's frame buffer
}

func (o *journalOutcome) collect(q *Queue, c *commitSet) {
	if o.seg = q.segmentFor(o.seq); o.seg == nil {
		o.err = fmt.Errorf("%w: seq %d (expired)", ErrNotFound, o.seq)
		return
	}
	c.outcomes = append(c.outcomes, o)
}

func (o *journalOutcome) settle(q *Queue) {
	if o.err == nil {
		q.pending.add(o.seg, o.target, o.seq, o.rec)
	}
	endClaim(q, o.target, o.seq, o.err)
}

// writeJournalOutcomes writes the frames of the commit's outcomes to the
// journal with one write and starts its fdatasync (see writeOutcomes),
// which overlaps the log's. The function returned waits for it and sets
// each outcome's answer. Writer only.
func (q *Queue) writeJournalOutcomes(c *commitSet) (wait func()) {
	if len(c.outcomes) == 0 {
		return func() {}
	}
	n := 0
	for _, o := range c.outcomes {
		n += 8 + 17 + len(q.targets[o.target]) + stateSize(o.state)
	}
	// One buffer for the write, sized by stateSize's upper bound: the
	// journal's, reused from commit to commit (the write is over when
	// writeOutcomes returns).
	buf := q.jrn.frameBuf(n)
	size := 0
	for _, o := range c.outcomes {
		var at int
		buf, at = appendJournalFrame(buf, q.jrn.gen, o.seq, q.targets[o.target], o.state)
		o.rec = buf[at:len(buf):len(buf)]
		size += len(o.rec)
	}
	// The pending set keeps each state record until the checkpoint: copied
	// into one buffer of their exact size, they do not keep the write's
	// buffer alive (frame headers, target names, the bound's slack: ~160
	// bytes an outcome in all, against ~60 with the copy; see
	// BenchmarkPendingOutcomeMemory).
	recs := make([]byte, 0, size)
	for _, o := range c.outcomes {
		at := len(recs)
		recs = append(recs, o.rec...)
		o.rec = recs[at:len(recs):len(recs)]
	}
	synced := q.writeOutcomes(buf, len(c.apps) > 0)
	return func() {
		err := synced()
		if err != nil {
			q.log.Error("outcome journal write failed", "file", journalName(q.jrn.gen), "err", err)
			err = fmt.Errorf("%w: %w", ErrIO, err)
		}
		for _, o := range c.outcomes {
			o.err = err
		}
	}
}

// stateChange sets the state of one message for one target in its
// segment's bbolt file, with the side effects of the transition on the
// target's retry schedule, dead-letter list and parked index: every
// outcome but a first Delivered one, Park, Unpark, Replay, Revive, Purge.
type stateChange struct {
	waiter
	seq    uint64
	target int
	state  *State

	oldRetry time.Time // retry entry to remove (zero: none)
	wasDead  bool      // the message leaves the dead-letter list (replay, revive, purge)
	purge    bool      // a purge: stays Dead but off the list
	parkKey  *[16]byte // Park: index the message under this key
	unpark   *[16]byte // Unpark: remove it from the index under this key

	// set by the writer
	seg          *segment
	skipped      bool // a precondition checked in the transaction failed (ErrNotFound)
	retryRemoved bool // oldRetry was in the schedule and is gone
}

func (s *stateChange) collect(q *Queue, c *commitSet) {
	if s.seg = q.segmentFor(s.seq); s.seg == nil {
		s.err = fmt.Errorf("%w: seq %d (expired)", ErrNotFound, s.seq)
		return
	}
	if c.bySeg == nil {
		c.bySeg = map[*segment][]*stateChange{}
	}
	c.bySeg[s.seg] = append(c.bySeg[s.seg], s)
}

// apply makes the change in tx, the transaction of the segment that holds
// s.seq: the state record, the retry schedule, the parked index and the
// dead-letter list. A transition whose precondition no longer holds (two
// Unparks, or Revives, of one message) sets s.skipped and changes nothing.
// Writer only.
func (s *stateChange) apply(tx *bolt.Tx, t string) error {
	s.skipped, s.retryRemoved = false, false
	// Transitions that callers check before asking are checked
	// again here, atomically: two Unparks (or Revives) of one
	// message must not both apply.
	if s.unpark != nil {
		if pb := tx.Bucket(parkBucket(t)); pb == nil || pb.Get(parkKey(*s.unpark, s.seq)) == nil {
			s.skipped = true
			return nil
		}
	}
	if s.wasDead {
		if db := tx.Bucket(deadBucket(t)); db == nil || db.Get(seqKey(s.seq)) == nil {
			s.skipped = true
			return nil
		}
	}
	if err := tx.Bucket(stateBucket(t)).Put(seqKey(s.seq), encodeState(s.state)); err != nil {
		return err
	}
	rb := tx.Bucket(retryBucket(t))
	if !s.oldRetry.IsZero() {
		if k := retryKey(s.oldRetry, s.seq); rb.Get(k) != nil {
			if err := rb.Delete(k); err != nil {
				return err
			}
			s.retryRemoved = true
		}
	}
	if s.state.Phase == Retrying {
		if err := rb.Put(retryKey(s.state.NextTry, s.seq), nil); err != nil {
			return err
		}
	}
	if s.parkKey != nil || s.unpark != nil {
		pb, err := tx.CreateBucketIfNotExists(parkBucket(t))
		if err != nil {
			return err
		}
		if s.unpark != nil {
			err = pb.Delete(parkKey(*s.unpark, s.seq))
		} else {
			err = pb.Put(parkKey(*s.parkKey, s.seq), nil)
		}
		if err != nil {
			return err
		}
	}
	if s.wasDead || (s.state.Phase == Dead && !s.purge) {
		db, err := tx.CreateBucketIfNotExists(deadBucket(t))
		if err != nil {
			return err
		}
		if s.wasDead {
			err = db.Delete(seqKey(s.seq))
		} else {
			err = db.Put(seqKey(s.seq), nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// settle updates the counts the change made (retry schedule and parked
// index, per segment and target) and ends the claim.
func (s *stateChange) settle(q *Queue) {
	if s.err == nil {
		if s.retryRemoved {
			s.seg.retries[s.target]--
			q.consumers[s.target].retrying--
		}
		if s.state.Phase == Retrying {
			s.seg.retries[s.target]++
			q.consumers[s.target].retrying++
		}
		if s.parkKey != nil {
			s.seg.parked[s.target]++
		}
		if s.unpark != nil {
			s.seg.parked[s.target]--
		}
	}
	endClaim(q, s.target, s.seq, s.err)
}

// commitStates commits the commit's state changes in one transaction per
// segment, oldest segment first. Writer only.
func (q *Queue) commitStates(c *commitSet, dirty map[*segment]bool) {
	if len(c.bySeg) == 0 {
		return
	}
	segs := make([]*segment, 0, len(c.bySeg))
	for s := range c.bySeg {
		segs = append(segs, s)
	}
	if len(segs) > 1 {
		sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	}
	for _, seg := range segs {
		ss := c.bySeg[seg]
		err := safeUpdate(seg.db, func(tx *bolt.Tx) error {
			for _, s := range ss {
				if err := s.apply(tx, q.targets[s.target]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			q.log.Error("state commit failed", "segment", segLabel(seg.first), "err", err)
			err = fmt.Errorf("%w: %w", ErrIO, err)
		} else {
			dirty[seg] = true
		}
		for _, s := range ss {
			s.err = err
			if err == nil && s.skipped {
				s.err = fmt.Errorf("%w: seq %d is no longer in that state", ErrNotFound, s.seq)
			}
		}
	}
}

// endClaim ends target t's in-flight claim of seq after its change was
// committed (err nil) or failed for good (ErrNotFound). A failed write
// leaves the message in flight: the floor stays below it, so it is
// attempted again after a restart (at least once). Caller holds q.mu.
func endClaim(q *Queue, t int, seq uint64, err error) {
	if err == nil || errors.Is(err, ErrNotFound) {
		delete(q.consumers[t].inflight, seq)
	}
}

// outcomeBatch is outcomes of one consumer (journalOutcome or stateChange)
// handed over and answered together (CompleteBatch); each part has its own
// error.
type outcomeBatch struct {
	waiter
	parts []change
}

func (b *outcomeBatch) collect(q *Queue, c *commitSet) {
	for _, p := range b.parts {
		p.collect(q, c)
	}
}

func (b *outcomeBatch) settle(q *Queue) {
	for _, p := range b.parts {
		p.settle(q)
	}
}
