package buffer

import (
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Lookup returns the message named by id and its status for every target.
// It returns ErrNotFound for an id this queue does not hold (including a
// right seq with a wrong random tag: ids are not guessable).
func (q *Queue) Lookup(id ID) (*Message, []TargetStatus, error) {
	q.mu.Lock()
	if q.segs == nil {
		q.mu.Unlock()
		return nil, nil, ErrClosed
	}
	seg := q.segmentFor(id.Seq())
	// Outcomes in the journal and not yet in bbolt (see journal.go): read
	// before the transaction, since a checkpoint moves them to bbolt first
	// and only then drops them here.
	pend := make([][]byte, len(q.targets))
	if seg != nil {
		for i := range q.targets {
			pend[i] = q.pendingState(seg, i, id.Seq())
		}
	}
	q.mu.Unlock()
	if seg == nil {
		return nil, nil, ErrNotFound
	}
	var m *Message
	states := make([]*State, len(q.targets))
	err := safeView(seg.db, func(tx *bolt.Tx) error {
		v, err := seg.log.read(id.Seq(), nil)
		if err != nil {
			return err
		}
		if m, err = DecodeRecord(v); err != nil {
			return err
		}
		if m.ID.Tag() != id.Tag() {
			return ErrNotFound
		}
		m.Seq, m.ID = id.Seq(), store.NewID(id.Seq(), m.ID.Tag())
		for i, t := range q.targets {
			sv := storedState(tx, t, id.Seq())
			if sv == nil {
				sv = pend[i]
			}
			if sv != nil {
				if states[i], err = decodeState(sv); err != nil {
					return fmt.Errorf("target %q: %w", t, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	out := make([]TargetStatus, len(q.targets))
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, c := range q.consumers {
		ts := TargetStatus{Target: c.target}
		if states[i] == nil {
			// Completed while the transaction ran.
			if sv := q.pendingState(seg, i, id.Seq()); sv != nil {
				states[i], _ = decodeState(sv)
			}
		}
		if states[i] != nil {
			ts.State = *states[i]
		} else {
			ts.Phase = Queued
		}
		if _, ok := c.inflight[id.Seq()]; ok {
			ts.Phase = InFlight
		}
		out[i] = ts
	}
	return m, out, nil
}

// Stats returns a snapshot without touching the disk, in O(targets).
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := QueueStats{Name: q.name, Segments: len(q.segs), Bytes: q.bytes.Load(), Appended: q.nextSeq - 1, Expired: q.expired, Damaged: q.damaged}
	for _, c := range q.consumers {
		fwdPending, fwdBusy := c.forwardedAhead() // forwarded records: finished, whatever the cursor says
		ts := TargetStats{Target: c.target, Floor: c.floorLocked(), InFlight: len(c.inflight) - fwdBusy}
		if q.nextSeq > c.next {
			ts.Pending = q.nextSeq - c.next - min(q.nextSeq-c.next, fwdPending)
		}
		ts.Retrying = c.retrying
		ts.Expired = c.expired // kept up to date: Stats is O(targets), cheap enough per request
		st.Targets = append(st.Targets, ts)
	}
	return st
}

// OldestPending returns when the oldest message target has not finished was
// accepted (the message at its floor), and false when it has none. It reads
// one record head from the log: cheap enough per metrics scrape, not per
// request (Stats is that).
func (q *Queue) OldestPending(target string) (time.Time, bool) {
	c, err := q.Consumer(target)
	if err != nil {
		return time.Time{}, false
	}
	q.mu.Lock()
	if q.segs == nil {
		q.mu.Unlock()
		return time.Time{}, false
	}
	f := c.floorLocked()
	if f >= q.nextSeq {
		q.mu.Unlock()
		return time.Time{}, false
	}
	seg := q.segmentFor(f)
	for _, s := range q.segs { // f fell in a gap: the next segment's first
		if seg != nil {
			break
		}
		if s.first > f {
			seg, f = s, s.first
		}
	}
	q.mu.Unlock()
	if seg == nil {
		return time.Time{}, false
	}
	rec, err := seg.log.read(f, nil)
	if err != nil {
		return time.Time{}, false
	}
	at, _, _ := recordHead(rec)
	return at, !at.IsZero()
}
