package jetstore

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sluice-proxy/sluice/store"
)

// Parking (store.Parker) holds a message back behind an earlier one with
// the same key hash, for drainers that keep per-key order or share a rate
// between keys. A parked message has the state Parked and a key in the
// state bucket, p.<route>.<target>.<key hash in hex>.<seq>, so a key's
// parked messages are one filtered listing away. Parking is no attempt:
// the attempt count is kept. The parked key is written first, then the
// state, then the durable consumer's acknowledgement: a message handed out
// again whose state is Parked is acknowledged and left parked.

func (c *Consumer) parkPrefix(key [16]byte) string {
	return "p." + c.q.name + "." + c.target + "." + hex.EncodeToString(key[:]) + "."
}

// Park records the fetched delivery d as parked under key instead of
// attempting it, and returns once that is written.
func (c *Consumer) Park(ctx context.Context, d *store.Delivery, key [16]byte) error {
	c.mu.Lock()
	h := c.inflight[d.Seq]
	c.mu.Unlock()
	if h == nil {
		return fmt.Errorf("jetstore: route %q: target %q: seq %d is not in flight", c.q.name, c.target, d.Seq)
	}
	if _, err := c.q.s.state.Put(ctx, c.parkPrefix(key)+strconv.FormatUint(d.Seq, 10), nil); err != nil {
		return fmt.Errorf("%w: park seq %d: %w", store.ErrIO, d.Seq, err)
	}
	st := &store.State{Phase: store.Parked}
	if d.Prior != nil {
		st.Attempts, st.History = d.Prior.Attempts, d.Prior.History
	}
	if err := c.q.putState(ctx, c.target, d.Seq, st); err != nil {
		return err
	}
	if h.fromRetry {
		if err := c.q.s.state.Purge(ctx, c.q.retryKey(c.target, d.Seq)); err != nil {
			return fmt.Errorf("%w: park seq %d: %w", store.ErrIO, d.Seq, err)
		}
	}
	if h.msg != nil {
		h.msg.Ack()
	}
	c.mu.Lock()
	delete(c.inflight, d.Seq)
	c.mu.Unlock()
	return nil
}

// parked lists the seqs parked under key, oldest first.
func (c *Consumer) parked(ctx context.Context, key [16]byte) ([]uint64, error) {
	keys, err := c.listKeys(ctx, c.parkPrefix(key)+"*")
	if err != nil {
		return nil, err
	}
	seqs := make([]uint64, 0, len(keys))
	for _, k := range keys {
		if seq, ok := keySeq(k); ok {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

func (c *Consumer) listKeys(ctx context.Context, filter string) ([]string, error) {
	kl, err := c.q.s.state.ListKeysFiltered(ctx, filter)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: list %s: %w", store.ErrIO, filter, err)
	}
	defer kl.Stop()
	var keys []string
	for k := range kl.Keys() {
		keys = append(keys, k)
	}
	return keys, nil
}

// NextParked returns the oldest message parked under key.
func (c *Consumer) NextParked(key [16]byte) (uint64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	seqs, err := c.parked(ctx, key)
	if err != nil || len(seqs) == 0 {
		return 0, false, err
	}
	return seqs[0], true, nil
}

// ParkedKeys calls fn for every key with parked messages and its oldest
// parked seq, oldest first, until fn returns false. It lists every parked
// message of the target.
func (c *Consumer) ParkedKeys(fn func(key [16]byte, oldest uint64) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	keys, err := c.listKeys(ctx, "p."+c.q.name+"."+c.target+".*.*")
	if err != nil {
		return err
	}
	oldest := map[[16]byte]uint64{}
	for _, k := range keys {
		f := strings.Split(k, ".")
		seq, ok := keySeq(k)
		b, herr := hex.DecodeString(f[len(f)-2])
		if !ok || herr != nil || len(b) != 16 {
			continue
		}
		var kh [16]byte
		copy(kh[:], b)
		if o, seen := oldest[kh]; !seen || seq < o {
			oldest[kh] = seq
		}
	}
	type entry struct {
		key [16]byte
		seq uint64
	}
	var es []entry
	for k, s := range oldest {
		es = append(es, entry{k, s})
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Compare(a.seq, b.seq) })
	for _, e := range es {
		if !fn(e.key, e.seq) {
			return nil
		}
	}
	return nil
}

// Unpark makes the message seq, parked under key, due at at: it enters the
// retry schedule with its attempt count unchanged. It fails without effect
// if seq is in flight or not parked under key (ErrNotFound).
func (c *Consumer) Unpark(ctx context.Context, seq uint64, key [16]byte, at time.Time) error {
	c.mu.Lock()
	_, busy := c.inflight[seq]
	c.mu.Unlock()
	if busy {
		return fmt.Errorf("jetstore: route %q: target %q: seq %d is in flight", c.q.name, c.target, seq)
	}
	pk := c.parkPrefix(key) + strconv.FormatUint(seq, 10)
	if _, err := c.q.s.state.Get(ctx, pk); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%w: seq %d is not parked under this key for target %q", store.ErrNotFound, seq, c.target)
		}
		return fmt.Errorf("%w: %w", store.ErrIO, err)
	}
	st, _, err := c.q.state(ctx, c.target, seq)
	if err != nil {
		return err
	}
	next := &store.State{Phase: store.Retrying, NextTry: at}
	if st != nil {
		next.Attempts, next.History = st.Attempts, st.History
	}
	if err := c.q.putState(ctx, c.target, seq, next); err != nil {
		return err
	}
	if err := c.q.putRetry(ctx, c.target, seq, at); err != nil {
		return err
	}
	if err := c.q.s.state.Purge(ctx, pk); err != nil {
		return fmt.Errorf("%w: unpark seq %d: %w", store.ErrIO, seq, err)
	}
	c.schedule(seq, at)
	if !c.Holds() { // the holder's schedule learns of it as of a revived dead letter
		c.q.s.nc.Publish(c.q.notify, fmt.Appendf(nil, "revive %s %d", c.target, seq))
	}
	return nil
}

// UnparkN unparks up to n of the oldest messages parked under key; all
// reports whether none is left parked (but those that failed).
func (c *Consumer) UnparkN(ctx context.Context, key [16]byte, n int, at time.Time) (seqs []uint64, all bool, err error) {
	if n <= 0 {
		return nil, false, nil
	}
	found, err := c.parked(ctx, key)
	if err != nil {
		return nil, false, err
	}
	all = len(found) <= n
	for _, seq := range found[:min(n, len(found))] {
		switch uerr := c.Unpark(ctx, seq, key, at); {
		case uerr == nil:
			seqs = append(seqs, seq)
		case errors.Is(uerr, store.ErrNotFound):
		case err == nil:
			err = uerr
		}
	}
	return seqs, all, err
}

// Cursor returns the seq of the next message never handed out by the
// durable consumer (as the servers count, across nodes).
func (c *Consumer) Cursor() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	info, err := c.cons.Info(ctx)
	if err != nil {
		return 0
	}
	return info.Delivered.Stream + 1
}

// EachRetry calls fn for every message in the retry schedule with its due
// time, earliest first, until fn returns false. The schedule is read from
// the state bucket if this node holds the lease and has not read it since
// gaining it; without the lease, it is empty.
func (c *Consumer) EachRetry(fn func(m *store.Message, due time.Time) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if ok, gen := c.lease.Held(); ok {
		if err := c.ensureSchedule(ctx, gen); err != nil {
			return err
		}
	}
	type entry struct {
		seq uint64
		at  time.Time
	}
	c.mu.Lock()
	es := make([]entry, 0, len(c.retries))
	for seq, at := range c.retries {
		es = append(es, entry{seq, at})
	}
	c.mu.Unlock()
	slices.SortFunc(es, func(a, b entry) int { return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.seq, b.seq)) })
	for _, e := range es {
		m, err := c.q.get(ctx, e.seq)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if !fn(m, e.at) {
			return nil
		}
	}
	return nil
}
