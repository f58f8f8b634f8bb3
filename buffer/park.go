package buffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Parking holds a message back behind an earlier one with the same key, for
// drainers that keep per-key order (or share a rate between keys). A parked
// message has a state (Parked), so the cursor passes it, and an entry in the
// per-target index "p/<target>" (key | seq), so the oldest parked message of
// a key is one seek away. Parking is not an attempt: the attempt count is
// kept. Parked messages are durable, keep their segment from being deleted
// early, and expire with it at the retention.

// KeyHash is the 16-byte hash under which messages are parked.
func KeyHash(key []byte) [16]byte { return store.KeyHash(key) }

// Park takes the fetched delivery d out of the flow of its target, under key,
// until Unpark. It returns once that is committed.
func (c *Consumer) Park(ctx context.Context, d *Delivery, key [16]byte) error {
	st := &State{Phase: Parked}
	if d.Prior != nil {
		st.Attempts = d.Prior.Attempts
		st.History = d.Prior.History
	}
	s := &stateChange{seq: d.Seq, target: c.idx, state: st, parkKey: &key, waiter: waiter{done: make(chan struct{}, 1)}}
	if d.Prior != nil && d.Prior.Phase == Retrying {
		s.oldRetry = d.Prior.NextTry
	}
	return c.q.complete(ctx, s, true)
}

// NextParked returns the oldest message parked under key, if any.
func (c *Consumer) NextParked(key [16]byte) (seq uint64, ok bool, err error) {
	segs := c.segmentsWith(func(s *segment) bool { return s.parked[c.idx] > 0 })
	for _, s := range segs {
		err = safeView(s.db, func(tx *bolt.Tx) error {
			pb := tx.Bucket(parkBucket(c.target))
			if pb == nil {
				return nil
			}
			k, _ := pb.Cursor().Seek(key[:])
			if k != nil && bytes.HasPrefix(k, key[:]) {
				seq, ok = binary.BigEndian.Uint64(k[16:]), true
			}
			return nil
		})
		if err != nil || ok {
			return seq, ok, err
		}
	}
	return 0, false, nil
}

// ParkedKeys calls fn with every key that has parked messages and the seq of
// its oldest one (for a drainer rebuilding its view at start), until fn
// returns false.
func (c *Consumer) ParkedKeys(fn func(key [16]byte, oldest uint64) bool) error {
	segs := c.segmentsWith(func(s *segment) bool { return s.parked[c.idx] > 0 })
	seen := map[[16]byte]bool{}
	for _, s := range segs { // oldest segment first: the first seq seen per key is its oldest
		stop := false
		err := safeView(s.db, func(tx *bolt.Tx) error {
			pb := tx.Bucket(parkBucket(c.target))
			if pb == nil {
				return nil
			}
			return pb.ForEach(func(k, _ []byte) error {
				var key [16]byte
				copy(key[:], k)
				if !seen[key] {
					seen[key] = true
					if !fn(key, binary.BigEndian.Uint64(k[16:])) {
						stop = true
						return errStop
					}
				}
				return nil
			})
		})
		if stop {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

var errStop = fmt.Errorf("stop")

// Unpark makes the message seq, parked under key, due at at: it enters the
// retry schedule with its attempt count unchanged, and Fetch hands it out
// among the due retries. It fails without effect if seq is in flight.
func (c *Consumer) Unpark(ctx context.Context, seq uint64, key [16]byte, at time.Time) error {
	return c.changeState(ctx, seq, func() (*stateChange, error) { return c.unparkChange(seq, key, at) })
}

// unparkChange builds the state change of Unpark.
func (c *Consumer) unparkChange(seq uint64, key [16]byte, at time.Time) (*stateChange, error) {
	q := c.q
	q.mu.Lock()
	seg := q.segmentFor(seq)
	q.mu.Unlock()
	if seg == nil {
		return nil, fmt.Errorf("%w: seq %d", ErrNotFound, seq)
	}
	var st *State
	err := safeView(seg.db, func(tx *bolt.Tx) error {
		pb := tx.Bucket(parkBucket(c.target))
		if pb == nil || pb.Get(parkKey(key, seq)) == nil {
			return fmt.Errorf("%w: seq %d is not parked under this key for target %q", ErrNotFound, seq, c.target)
		}
		v := tx.Bucket(stateBucket(c.target)).Get(seqKey(seq))
		if v == nil {
			return fmt.Errorf("%w: seq %d has no state", ErrNotFound, seq)
		}
		var err error
		st, err = decodeState(v)
		return err
	})
	if err != nil {
		return nil, err
	}
	next := &State{Phase: Retrying, Attempts: st.Attempts, NextTry: at, History: st.History}
	return &stateChange{seq: seq, target: c.idx, state: next, unpark: &key, waiter: waiter{done: make(chan struct{}, 1)}}, nil
}

// UnparkN unparks up to n of the oldest messages parked under key, each as
// Unpark does, all at once: their changes reach the writer back to back and
// share its commits (with SyncAlways, usually one fsync instead of one per
// message). It returns the seqs unparked, oldest first, and all: when it
// looked, the key had fewer than n parked messages, so none is left parked
// but those that could not be unparked. A message found parked that no
// longer is (expired with its segment, or unparked meanwhile) is skipped;
// err is the first other failure, with the seqs unparked nonetheless.
func (c *Consumer) UnparkN(ctx context.Context, key [16]byte, n int, at time.Time) (seqs []uint64, all bool, err error) {
	if n <= 0 {
		return nil, false, nil
	}
	found, err := c.parkedUnder(key, n)
	if err != nil {
		return nil, false, err
	}
	errs := c.changeStates(ctx, found, func(seq uint64) (*stateChange, error) { return c.unparkChange(seq, key, at) })
	for i, seq := range found {
		switch {
		case errs[i] == nil:
			seqs = append(seqs, seq)
		case errors.Is(errs[i], ErrNotFound):
		case err == nil:
			err = errs[i]
		}
	}
	return seqs, len(found) < n, err
}

// parkedUnder returns up to n of the oldest messages parked under key.
func (c *Consumer) parkedUnder(key [16]byte, n int) ([]uint64, error) {
	segs := c.segmentsWith(func(s *segment) bool { return s.parked[c.idx] > 0 })
	var out []uint64
	for _, s := range segs { // oldest segment first
		err := safeView(s.db, func(tx *bolt.Tx) error {
			pb := tx.Bucket(parkBucket(c.target))
			if pb == nil {
				return nil
			}
			cur := pb.Cursor()
			for k, _ := cur.Seek(key[:]); k != nil && bytes.HasPrefix(k, key[:]) && len(out) < n; k, _ = cur.Next() {
				out = append(out, binary.BigEndian.Uint64(k[16:]))
			}
			return nil
		})
		if err != nil || len(out) >= n {
			return out, err
		}
	}
	return out, nil
}

// EachRetry calls fn with every message in this target's retry schedule that
// is not in flight, oldest segment first, with its due time, until fn
// returns false. It reads the schedule and the records; it claims nothing.
// A drainer that keeps per-key state uses it at start to find which message
// owns each key.
func (c *Consumer) EachRetry(fn func(m *Message, due time.Time) bool) error {
	segs := c.segmentsWith(func(s *segment) bool { return s.retries[c.idx] > 0 })
	for _, s := range segs {
		stop := false
		busyNow := c.inflightCopy() // a read transaction never waits for q.mu (doc.go, "Lock order")
		err := safeView(s.db, func(tx *bolt.Tx) error {
			rb := tx.Bucket(retryBucket(c.target))
			return rb.ForEach(func(k, _ []byte) error {
				due, seq := parseRetryKey(k)
				if _, busy := busyNow[seq]; busy {
					return nil
				}
				v, err := s.log.read(seq, nil)
				if errors.Is(err, ErrClosed) {
					return err
				}
				if err != nil {
					return nil // Fetch reports and buries damaged ones
				}
				m, err := DecodeRecord(v)
				if err != nil {
					return nil // Fetch reports and buries damaged ones
				}
				m.Seq, m.ID = seq, store.NewID(seq, m.ID.Tag())
				if !fn(m, due) {
					stop = true
					return errStop
				}
				return nil
			})
		})
		if stop {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}
