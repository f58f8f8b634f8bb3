package jetstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sluice-proxy/sluice/store"
)

// held is a message this node handed out (in flight) or was given back
// (released) and has not finished.
type held struct {
	d         *store.Delivery
	msg       jetstream.Msg // the JetStream delivery to acknowledge; nil for a retry from the schedule
	fromRetry bool          // came from the retry schedule: its "r." key goes once it is finished
	alive     time.Time     // when the server last heard of it (handed out, or kept alive)
}

// Consumer is one target's durable JetStream consumer on a route's stream,
// plus the engine's own retry schedule, gated by the target's lease: only
// the node holding the lease hands out messages.
type Consumer struct {
	q      *Queue
	target string
	cons   jetstream.Consumer
	lease  *Lease
	ready  chan struct{}
	// maxAckPending is the durable consumer's, as last set (under Queue.mu).
	maxAckPending int

	mu        sync.Mutex
	inflight  map[uint64]*held
	released  []*held              // given back, handed out first, in seq order
	retries   map[uint64]time.Time // the retry schedule, due times (not in flight)
	loadedGen uint64               // the lease acquisition the schedule was loaded for
	loadedAt  time.Time            // when it was last read from the state bucket
	closed    bool

	stop chan struct{}
	done chan struct{}
}

func newConsumer(q *Queue, target string, o ConsumerOptions) (*Consumer, error) {
	cons, err := q.durable(target, o)
	if err != nil {
		return nil, err
	}
	c := &Consumer{q: q, target: target, cons: cons, maxAckPending: o.MaxAckPending, ready: make(chan struct{}, 1),
		inflight: map[uint64]*held{}, retries: map[uint64]time.Time{},
		stop: make(chan struct{}), done: make(chan struct{})}
	c.lease = NewLease(q.s.leases, q.name+"."+target, q.s.cfg.Node, q.s.cfg.LeaseTTL, q.s.cfg.HandoverQuiet, c.leaseChanged)
	c.lease.Start()
	go c.keepAlive()
	return c, nil
}

// durable creates target's durable consumer, or updates its MaxAckPending.
func (q *Queue) durable(target string, o ConsumerOptions) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	err := setUp(func(ctx context.Context) (err error) {
		cons, err = q.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable:       target,
			Description:   "sluice target " + target + " of route " + q.name,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       q.s.cfg.AckWait,
			MaxDeliver:    -1, // attempts are counted by the engine's retry schedule
			MaxAckPending: o.MaxAckPending,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("jetstore: route %q: target %q: consumer: %w", q.name, target, err)
	}
	return cons, nil
}

// Target is the target's name.
func (c *Consumer) Target() string { return c.target }

// Ready is signalled after new messages are appended on any node, a dead
// letter is revived, or this node gains the lease.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

func (c *Consumer) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Holds reports whether this node holds the target's lease now.
func (c *Consumer) Holds() bool {
	h, _ := c.lease.Held()
	return h
}

func (c *Consumer) leaseChanged(held bool) {
	if held {
		c.signal()
		if q := c.q.s.cfg.HandoverQuiet; q > 0 {
			time.AfterFunc(q, c.signal) // the quiet second is over
		}
		return
	}
	// Lost: what was given back goes back to the server for the next
	// holder; attempts under way finish and are recorded.
	c.mu.Lock()
	rel := c.released
	c.released = nil
	clear(c.retries)
	c.mu.Unlock()
	for _, h := range rel {
		if h.msg != nil {
			giveBack(h.msg)
		}
	}
}

// keepAlive tells the server, every third of AckWait, that the messages this
// node holds are still being worked on, so that only a dead node's are
// handed out again.
func (c *Consumer) keepAlive() {
	defer close(c.done)
	every := c.q.s.cfg.AckWait / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		// Only messages held for a third of AckWait: most are finished
		// sooner, and a batch target holds many.
		now := time.Now()
		var msgs []jetstream.Msg
		keep := func(h *held) {
			if h.msg != nil && now.Sub(h.alive) >= every {
				msgs = append(msgs, h.msg)
				h.alive = now
			}
		}
		c.mu.Lock()
		for _, h := range c.inflight {
			keep(h)
		}
		for _, h := range c.released {
			keep(h)
		}
		c.mu.Unlock()
		for _, m := range msgs {
			m.InProgress()
		}
	}
}

// close gives back every message held (the server hands them out again at
// once), and releases the lease.
func (c *Consumer) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	var hs []*held
	for _, h := range c.inflight {
		hs = append(hs, h)
	}
	hs = append(hs, c.released...)
	c.inflight, c.released = map[uint64]*held{}, nil
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	slices.SortFunc(hs, func(a, b *held) int { return cmp.Compare(a.d.Seq, b.d.Seq) })
	for _, h := range hs {
		if h.msg != nil {
			giveBack(h.msg)
		}
	}
	c.lease.Stop()
}

func (c *Consumer) inFlight(seq uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.inflight[seq]
	return ok
}

// schedule puts seq in the retry schedule (a revived dead letter).
func (c *Consumer) schedule(seq uint64, at time.Time) {
	c.mu.Lock()
	if _, busy := c.inflight[seq]; !busy {
		c.retries[seq] = at
	}
	c.mu.Unlock()
	c.signal()
}

// reloadRetry reads seq's retry entry after another node revived it.
func (c *Consumer) reloadRetry(seq uint64) {
	if !c.Holds() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	e, err := c.q.s.state.Get(ctx, c.q.retryKey(c.target, seq))
	if err != nil {
		return
	}
	if ns, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
		c.schedule(seq, time.Unix(0, ns))
	}
}

// loadRetries reads the target's retry schedule from the state bucket:
// with replace (after this node gained the lease) it is the schedule; else
// its entries are added to the schedule held (one completed meanwhile
// stays).
func (c *Consumer) loadRetries(ctx context.Context, replace bool) error {
	seqs, err := c.q.listSeqs(ctx, "r", c.target)
	if err != nil {
		return err
	}
	due := make(map[uint64]time.Time, len(seqs))
	for _, seq := range seqs {
		e, err := c.q.s.state.Get(ctx, c.q.retryKey(c.target, seq))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: retry schedule: %w", store.ErrIO, err)
		}
		ns, err := strconv.ParseInt(string(e.Value()), 10, 64)
		if err != nil {
			continue
		}
		due[seq] = time.Unix(0, ns)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if replace {
		clear(c.retries)
	}
	for seq, at := range due {
		if _, busy := c.inflight[seq]; !busy {
			c.retries[seq] = at
		}
	}
	return nil
}

// scheduleRefresh is how often the lease holder reads its retry schedule
// from the state bucket again: a replay, revival or unpark on another node
// tells the holder with a core NATS message, which a holder reconnecting
// at that moment misses; the entry is in the bucket all the same.
// (A variable for tests.)
var scheduleRefresh = 30 * time.Second

// ensureSchedule loads the retry schedule once per lease acquisition gen,
// and again every scheduleRefresh. Reading it again is safe while messages
// are handed out: those in flight are skipped, and an entry read just
// before its message finished is dropped when it comes due (fromSchedule
// checks the state).
func (c *Consumer) ensureSchedule(ctx context.Context, gen uint64) error {
	c.mu.Lock()
	gained := c.loadedGen != gen
	stale := gained || time.Since(c.loadedAt) > scheduleRefresh
	c.mu.Unlock()
	if !stale {
		return nil
	}
	if err := c.loadRetries(ctx, gained); err != nil {
		return err
	}
	c.mu.Lock()
	c.loadedGen, c.loadedAt = gen, time.Now()
	c.mu.Unlock()
	return nil
}

// NextRetry returns when the earliest retry not in flight is due; none
// while this node does not hold the lease.
func (c *Consumer) NextRetry() (time.Time, bool) {
	if ok, _ := c.lease.Active(); !ok {
		return time.Time{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var first time.Time
	for _, at := range c.retries {
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	return first, !first.IsZero()
}

// Fetch returns up to max messages to attempt now, while this node holds
// the target's lease (none otherwise): due retries first, then messages
// given back, then messages from the durable consumer (never attempted, or
// handed out again after a node died holding them).
func (c *Consumer) Fetch(max int, now time.Time) ([]*store.Delivery, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, store.ErrClosed
	}
	ok, gen := c.lease.Active()
	if !ok || max <= 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := c.ensureSchedule(ctx, gen); err != nil {
		return nil, err
	}
	var out []*store.Delivery
	c.mu.Lock()
	type entry struct {
		seq uint64
		at  time.Time
	}
	var due []entry
	for seq, at := range c.retries {
		if !at.After(now) {
			due = append(due, entry{seq, at})
		}
	}
	c.mu.Unlock()
	slices.SortFunc(due, func(a, b entry) int { return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.seq, b.seq)) })
	for _, e := range due {
		if len(out) >= max {
			break
		}
		d, err := c.fromSchedule(ctx, e.seq)
		if err != nil {
			return out, err
		}
		if d != nil {
			out = append(out, d)
		}
	}
	c.mu.Lock()
	for len(out) < max && len(c.released) > 0 {
		h := c.released[0]
		c.released = c.released[1:]
		c.inflight[h.d.Seq] = h
		out = append(out, h.d)
	}
	c.mu.Unlock()
	if len(out) < max {
		got, err := c.fromStream(ctx, max-len(out))
		out = append(out, got...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// fromSchedule hands out the due retry seq; nil if it is gone (expired, or
// finished and not yet removed).
func (c *Consumer) fromSchedule(ctx context.Context, seq uint64) (*store.Delivery, error) {
	m, err := c.q.get(ctx, seq)
	if errors.Is(err, store.ErrNotFound) {
		c.dropRetry(ctx, seq)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st, _, err := c.q.state(ctx, c.target, seq)
	if err != nil {
		return nil, err
	}
	if st != nil && (st.Phase == store.Delivered || st.Phase == store.Dead || st.Phase == store.Parked || st.Phase == store.Purged) {
		// Finished, the schedule's entry not yet removed (a crash between).
		if st.Phase == store.Dead {
			c.q.s.state.Put(ctx, c.q.deadKey(c.target, seq), nil)
		}
		c.dropRetry(ctx, seq)
		return nil, nil
	}
	d := &store.Delivery{Message: m, Attempt: 1, Prior: st}
	if st != nil {
		d.Attempt = st.Attempts + 1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.retries[seq]; !ok {
		return nil, nil // taken meanwhile
	}
	delete(c.retries, seq)
	c.inflight[seq] = &held{d: d, fromRetry: true, alive: time.Now()}
	return d, nil
}

func (c *Consumer) dropRetry(ctx context.Context, seq uint64) {
	c.mu.Lock()
	delete(c.retries, seq)
	c.mu.Unlock()
	c.q.s.state.Purge(ctx, c.q.retryKey(c.target, seq))
}

// fromStream pulls up to n messages from the durable consumer without
// waiting. A message handed out before (a node died holding it, or its
// acknowledgement was lost) is checked against its recorded state first.
func (c *Consumer) fromStream(ctx context.Context, n int) ([]*store.Delivery, error) {
	batch, err := c.cons.FetchNoWait(n)
	if err != nil {
		return nil, fmt.Errorf("%w: fetch: %w", store.ErrIO, err)
	}
	var out []*store.Delivery
	for msg := range batch.Messages() {
		d, err := c.admit(ctx, msg)
		if err != nil {
			giveBack(msg)
			c.q.s.log.Error("jetstream: cannot hand out a message; it will be handed out again", "route", c.q.name, "target", c.target, "err", err)
			continue
		}
		if d != nil {
			out = append(out, d)
		}
	}
	if err := batch.Error(); err != nil && !benignFetchErr(err) {
		return out, fmt.Errorf("%w: fetch: %w", store.ErrIO, err)
	}
	return out, nil
}

func benignFetchErr(err error) bool {
	if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrMaxBytesExceeded) || errors.Is(err, jetstream.ErrBatchCompleted) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "Exceeded") || strings.Contains(s, "Leadership Change")
}

// admit turns a JetStream delivery into a Delivery; nil if it needs no
// attempt (finished, or in the retry schedule).
func (c *Consumer) admit(ctx context.Context, msg jetstream.Msg) (*store.Delivery, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return nil, err
	}
	seq := meta.Sequence.Stream
	c.mu.Lock()
	if h := c.inflight[seq]; h != nil {
		h.msg, h.alive = msg, time.Now() // handed out again while we hold it: acknowledge the new delivery
		c.mu.Unlock()
		return nil, nil
	}
	for _, h := range c.released {
		if h.d.Seq == seq {
			h.msg, h.alive = msg, time.Now()
			c.mu.Unlock()
			return nil, nil
		}
	}
	c.mu.Unlock()
	var st *store.State
	if meta.NumDelivered > 1 {
		if st, _, err = c.q.state(ctx, c.target, seq); err != nil {
			return nil, err
		}
		if st != nil {
			switch st.Phase {
			case store.Delivered, store.Parked, store.Purged:
				msg.Ack() // finished, or waiting under its key (Park wrote its key first)
				return nil, nil
			case store.Dead:
				if _, err := c.q.s.state.Put(ctx, c.q.deadKey(c.target, seq), nil); err != nil {
					return nil, err
				}
				msg.Ack()
				return nil, nil
			case store.Retrying:
				if err := c.q.putRetry(ctx, c.target, seq, st.NextTry); err != nil {
					return nil, err
				}
				c.schedule(seq, st.NextTry)
				msg.Ack()
				return nil, nil
			}
		}
	}
	m, err := store.DecodeRecord(msg.Data())
	if err != nil {
		// A damaged record: dead for this target, with the reason.
		m = &store.Message{Seq: seq}
		d := &store.Delivery{Message: m, Attempt: 1}
		c.mu.Lock()
		c.inflight[seq] = &held{d: d, msg: msg, alive: time.Now()}
		c.mu.Unlock()
		return nil, c.Complete(ctx, d, store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: time.Now(), Error: err.Error()}})
	}
	m.Seq = seq
	m.ID = store.NewID(seq, m.ID.Tag())
	d := &store.Delivery{Message: m, Attempt: 1, Prior: st}
	if st != nil {
		d.Attempt = st.Attempts + 1
	}
	c.mu.Lock()
	c.inflight[seq] = &held{d: d, msg: msg, alive: time.Now()}
	c.mu.Unlock()
	return d, nil
}

// Complete records the outcome of the attempt d: see CompleteBatch.
func (c *Consumer) Complete(ctx context.Context, d *store.Delivery, out store.Outcome) error {
	return c.CompleteBatch(ctx, []*store.Delivery{d}, []store.Outcome{out})[0]
}

// CompleteBatch records the outcomes of many attempts, sharing round trips:
// first every state in the state bucket (the writes that must succeed), all
// published at once and awaited together; then the retry and dead-letter
// entries (and the removal of finished retries' entries), likewise; then
// the acknowledgements to the durable consumer, not awaited (a message
// handed out again is checked against its state first). errs[i] is ds[i]'s;
// an attempt whose state was not written stays in flight.
func (c *Consumer) CompleteBatch(ctx context.Context, ds []*store.Delivery, outs []store.Outcome) []error {
	errs := make([]error, len(ds))
	hs := make([]*held, len(ds))
	c.mu.Lock()
	for i, d := range ds {
		if hs[i] = c.inflight[d.Seq]; hs[i] == nil {
			errs[i] = fmt.Errorf("jetstore: route %q: target %q: seq %d is not in flight", c.q.name, c.target, d.Seq)
		}
	}
	c.mu.Unlock()
	w := c.q.newKVBatch()
	for i, d := range ds {
		if errs[i] != nil {
			continue
		}
		out := outs[i]
		switch out.Phase {
		case store.Retrying, store.Delivered, store.Dead:
		default:
			errs[i] = fmt.Errorf("jetstore: outcome phase %q: want delivered, retrying or dead", out.Phase)
			continue
		}
		a := out.Attempt
		if a.N == 0 {
			a.N = d.Attempt
		}
		st := &store.State{Phase: out.Phase, Attempts: d.Attempt, Response: out.Response}
		if d.Prior != nil {
			st.History = d.Prior.History
		}
		st.History = appendHistory(st.History, a)
		if out.Phase == store.Retrying {
			st.NextTry = out.NextTry
		}
		w.put(i, c.q.stateKey(c.target, d.Seq), store.AppendState(nil, st))
	}
	w.wait(ctx, errs, "record the state")
	w = c.q.newKVBatch()
	for i, d := range ds {
		if errs[i] != nil {
			continue
		}
		switch outs[i].Phase {
		case store.Retrying:
			w.put(i, c.q.retryKey(c.target, d.Seq), strconv.AppendInt(nil, outs[i].NextTry.UnixNano(), 10))
		case store.Dead:
			w.put(i, c.q.deadKey(c.target, d.Seq), nil)
		}
		if hs[i].fromRetry && outs[i].Phase != store.Retrying {
			w.purge(i, c.q.retryKey(c.target, d.Seq))
		}
	}
	w.wait(ctx, errs, "update the retry schedule or dead letters")
	held, _ := c.lease.Held()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, d := range ds {
		if errs[i] != nil {
			continue
		}
		if hs[i].msg != nil {
			hs[i].msg.Ack()
		}
		delete(c.inflight, d.Seq)
		if outs[i].Phase == store.Retrying && held {
			c.retries[d.Seq] = outs[i].NextTry
		}
	}
	return errs
}

// Release gives back a fetched message without an outcome: this node hands
// it out again first (or the server does, to the next lease holder).
func (c *Consumer) Release(d *store.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.inflight[d.Seq]
	if h == nil {
		return
	}
	delete(c.inflight, d.Seq)
	if c.closed {
		if h.msg != nil {
			giveBack(h.msg)
		}
		return
	}
	h.d = &store.Delivery{Message: d.Message, Attempt: d.Attempt, Prior: d.Prior}
	i, _ := slices.BinarySearchFunc(c.released, d.Seq, func(x *held, seq uint64) int { return cmp.Compare(x.d.Seq, seq) })
	c.released = slices.Insert(c.released, i, h)
	c.signal()
}

// stats is the target's progress: the consumer's ack floor and pending
// count from the server, in flight and retrying from this node.
func (c *Consumer) stats(ctx context.Context) store.TargetStats {
	ts := store.TargetStats{Target: c.target}
	if info, err := c.cons.Info(ctx); err == nil {
		ts.Floor = info.AckFloor.Stream + 1
		ts.Pending = info.NumPending
	}
	c.mu.Lock()
	ts.InFlight = len(c.inflight)
	ts.Retrying = len(c.retries)
	c.mu.Unlock()
	return ts
}

// giveBack hands a message back to the server to be handed out again at
// once. A NAK with a delay, unlike a plain one, is stored with the
// consumer's state, so that it holds across a restart of the server (an
// embedded server stops with the process): otherwise a message given back
// at a graceful stop would wait out AckWait after the restart.
func giveBack(msg jetstream.Msg) { msg.NakWithDelay(time.Millisecond) }
