package buffer

import (
	"context"
	"encoding/binary"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DeadLetters lists up to limit dead letters of target with seq above after,
// oldest first. It reads the dead-letter index, not every state.
func (q *Queue) DeadLetters(target string, after uint64, limit int) ([]DeadLetter, error) {
	if _, err := q.Consumer(target); err != nil {
		return nil, err
	}
	q.mu.Lock()
	segs := append([]*segment(nil), q.segs...)
	lasts := make([]uint64, len(segs)) // the writer moves the head's last under q.mu
	for i, seg := range segs {
		lasts[i] = seg.last
	}
	q.mu.Unlock()
	var out []DeadLetter
	for i, seg := range segs {
		if lasts[i] <= after && lasts[i] >= seg.first {
			continue
		}
		err := safeView(seg.db, func(tx *bolt.Tx) error {
			db := tx.Bucket(deadBucket(target))
			if db == nil {
				return nil
			}
			c := db.Cursor()
			for k, _ := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, _ = c.Next() {
				seq := binary.BigEndian.Uint64(k)
				dl := DeadLetter{Target: target}
				if v, err := seg.log.read(seq, nil); err == nil {
					if m, err := DecodeRecord(v); err == nil {
						m.Seq, m.ID = seq, store.NewID(seq, m.ID.Tag())
						dl.Message = m
					}
				}
				if dl.Message == nil { // damaged record: list it with what is known
					dl.Message = &Message{Seq: seq, ID: store.NewID(seq, [8]byte{})}
				}
				if sv := tx.Bucket(stateBucket(target)).Get(k); sv != nil {
					if st, err := decodeState(sv); err == nil {
						dl.State = *st
					}
				}
				out = append(out, dl)
			}
			return nil
		})
		if err != nil {
			return out, err
		}
		if len(out) >= limit {
			break
		}
	}
	return out, nil
}

// Revive puts the dead letter seq of target back into its retry schedule,
// due at at, with its attempt count reset (the history is kept, with a note).
// The drainer then delivers it through the target's own limiter.
func (q *Queue) Revive(ctx context.Context, target string, seq uint64, at time.Time) error {
	return q.leaveDead(ctx, target, seq, func(st *State, now time.Time) *State {
		return &State{Phase: Retrying, Attempts: 0, NextTry: at,
			History: appendHistory(st.History, Attempt{At: now, Error: "replayed from the dead letters by an operator"})}
	}, false)
}

// Purge removes the dead letter seq of target from the dead-letter list:
// its phase becomes Purged (finished, listed and counted as purged); its
// record goes with its segment.
func (q *Queue) Purge(ctx context.Context, target string, seq uint64) error {
	return q.leaveDead(ctx, target, seq, func(st *State, now time.Time) *State {
		return &State{Phase: store.Purged, Attempts: st.Attempts,
			History: appendHistory(st.History, Attempt{At: now, Error: "purged from the dead letters by an operator"})}
	}, true)
}

func appendHistory(h []Attempt, a Attempt) []Attempt {
	h = append(append([]Attempt(nil), h...), a)
	if len(h) > maxHistory {
		h = h[len(h)-maxHistory:]
	}
	return h
}

func (q *Queue) leaveDead(ctx context.Context, target string, seq uint64, next func(*State, time.Time) *State, purge bool) error {
	c, err := q.Consumer(target)
	if err != nil {
		return err
	}
	return c.changeState(ctx, seq, func() (*stateChange, error) {
		q.mu.Lock()
		seg := q.segmentFor(seq)
		q.mu.Unlock()
		if seg == nil {
			return nil, fmt.Errorf("%w: seq %d", ErrNotFound, seq)
		}
		var st *State
		err := safeView(seg.db, func(tx *bolt.Tx) error {
			db := tx.Bucket(deadBucket(target))
			if db == nil || db.Get(seqKey(seq)) == nil {
				return fmt.Errorf("%w: seq %d is not a dead letter of target %q", ErrNotFound, seq, target)
			}
			v := tx.Bucket(stateBucket(target)).Get(seqKey(seq))
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
		return &stateChange{seq: seq, target: c.idx, state: next(st, q.cfg.Now()),
			wasDead: true, purge: purge, waiter: waiter{done: make(chan struct{}, 1)}}, nil
	})
}
