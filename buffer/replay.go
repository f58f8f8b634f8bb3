package buffer

import (
	"context"
	"fmt"
	"time"

	"github.com/sluice-proxy/sluice/store"
	bolt "go.etcd.io/bbolt"
)

// Replay implements store.Replayer: the message seq, delivered to target
// or dead for it, goes back into the target's retry schedule, due at at.
// Its attempt count and history are kept, with the replay recorded as an
// attempt by an operator; the drainer then delivers it through the
// target's limiter and records the new outcome as usual. A dead letter
// leaves the dead-letter list. Any other phase (queued, in flight,
// retrying, parked, purged) is ErrNotFound: nothing changes.
func (q *Queue) Replay(ctx context.Context, target string, seq uint64, at time.Time) error {
	c, err := q.Consumer(target)
	if err != nil {
		return err
	}
	return c.changeState(ctx, seq, func() (*stateChange, error) {
		q.mu.Lock()
		seg := q.segmentFor(seq)
		var pend []byte
		if seg != nil {
			pend = q.pendingState(seg, c.idx, seq)
		}
		q.mu.Unlock()
		if seg == nil {
			return nil, fmt.Errorf("%w: seq %d", ErrNotFound, seq)
		}
		var st *State
		var dead bool
		err := safeView(seg.db, func(tx *bolt.Tx) error {
			v := storedState(tx, target, seq)
			if v == nil {
				v = pend
			}
			if v == nil {
				return fmt.Errorf("%w: seq %d is not finished for target %q", ErrNotFound, seq, target)
			}
			var err error
			if st, err = decodeState(v); err != nil {
				return err
			}
			if db := tx.Bucket(deadBucket(target)); db != nil && db.Get(seqKey(seq)) != nil {
				dead = true
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if st.Phase != Delivered && !(st.Phase == Dead && dead) {
			return nil, fmt.Errorf("%w: seq %d is %s for target %q, not delivered or dead", ErrNotFound, seq, phaseOf(st, false), target)
		}
		now := q.cfg.Now()
		note := Attempt{N: st.Attempts, At: now, Error: "replayed by an operator (was " + string(st.Phase) + ")"}
		next := &State{Phase: Retrying, Attempts: st.Attempts, NextTry: at, History: appendHistory(st.History, note)}
		return &stateChange{seq: seq, target: c.idx, state: next, wasDead: dead, waiter: waiter{done: make(chan struct{}, 1)}}, nil
	})
}

var _ store.Replayer = (*Queue)(nil)
var _ store.Lister = (*Queue)(nil)
