package jetstore

import (
	"context"
	"fmt"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// Replay implements store.Replayer: the message seq, delivered to target or
// dead for it, goes back into the target's retry schedule, due at at, with
// its attempt count and history kept and the replay noted in the history;
// the lease holder's drainer (on whichever node) then delivers it through
// the target's limiter. A dead letter leaves the dead-letter list. Any
// other phase (queued, in flight, retrying, parked, purged), or a message
// the retention deleted, is ErrNotFound: nothing changes.
//
// The writes, in order: the retry entry; the dead-letter entry's removal;
// the state, by compare-and-set on its revision (so that of two replays, or
// a replay and a purge, one wins); then a notice to the holder, which reads
// the retry entry into its schedule. A node dying between two writes leaves
// a retry entry whose state is still delivered or dead: the holder drops it
// when it comes due (putting a dead letter back on its list), so the replay
// is undone, never half done. Only a lost notice delays a replay: the
// holder then reads the entry when it next gains the lease.
func (q *Queue) Replay(ctx context.Context, target string, seq uint64, at time.Time) error {
	if err := q.checkTarget(target); err != nil {
		return err
	}
	if _, cancel := ctx.Deadline(); !cancel {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, opTimeout)
		defer c()
	}
	if _, err := q.get(ctx, seq); err != nil {
		return err
	}
	st, rev, err := q.state(ctx, target, seq)
	if err != nil {
		return err
	}
	if st == nil {
		return fmt.Errorf("%w: seq %d is not finished for target %q", store.ErrNotFound, seq, target)
	}
	p := statePhase(st)
	if p != store.Delivered && p != store.Dead {
		return fmt.Errorf("%w: seq %d is %s for target %q, not delivered or dead", store.ErrNotFound, seq, p, target)
	}
	if c := q.consumer(target); c != nil && c.inFlight(seq) {
		return fmt.Errorf("%w: seq %d is in flight for target %q", store.ErrNotFound, seq, target)
	}
	note := store.Attempt{N: st.Attempts, At: time.Now(), Error: "replayed by an operator (was " + string(p) + ")"}
	next := &store.State{Phase: store.Retrying, Attempts: st.Attempts, NextTry: at, History: appendHistory(st.History, note)}
	if err := q.putRetry(ctx, target, seq, at); err != nil {
		return err
	}
	if p == store.Dead {
		if err := q.s.state.Purge(ctx, q.deadKey(target, seq)); err != nil {
			return fmt.Errorf("%w: replay seq %d: %w", store.ErrIO, seq, err)
		}
	}
	if _, err := q.s.state.Update(ctx, q.stateKey(target, seq), store.AppendState(nil, next), rev); err != nil {
		now, _, rerr := q.state(ctx, target, seq)
		if rerr == nil && (now == nil || now.Phase != st.Phase || now.Attempts != st.Attempts || len(now.History) != len(st.History)) {
			return fmt.Errorf("%w: seq %d changed for target %q while it was replayed", store.ErrNotFound, seq, target)
		}
		return fmt.Errorf("%w: replay seq %d for %q: %w", store.ErrIO, seq, target, err)
	}
	if c := q.consumer(target); c != nil && c.Holds() {
		c.schedule(seq, at)
	}
	q.s.nc.Publish(q.notify, fmt.Appendf(nil, "revive %s %d", target, seq))
	return nil
}
