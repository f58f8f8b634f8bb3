package jetstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sluice-proxy/sluice/store"
)

// statsTTL is how long a Stats snapshot is reused: it costs a stream info
// and a consumer info per target, round trips to the servers.
const statsTTL = 250 * time.Millisecond

// Queue is one route's stream and its targets' consumers.
type Queue struct {
	s       *Store
	name    string
	stream  jetstream.Stream
	subject string
	notify  string // core NATS subject: "new messages" and "a dead letter revived"

	mu        sync.Mutex
	targets   []string
	consumers map[string]*Consumer
	closed    bool

	appended atomic.Uint64
	waking   atomic.Bool // a wake-up is due to go out

	statsMu sync.Mutex
	stats   store.QueueStats
	statsAt time.Time

	sub *nats.Subscription
}

func openQueue(s *Store, name string, targets []string) (*Queue, error) {
	q := &Queue{s: s, name: name, subject: s.cfg.StreamPrefix + "." + name,
		notify: s.cfg.StreamPrefix + "-notify." + name, consumers: map[string]*Consumer{}}
	cfg := jetstream.StreamConfig{
		Name:        s.cfg.StreamPrefix + "_" + name,
		Description: "sluice route " + name,
		Subjects:    []string{q.subject},
		Retention:   jetstream.LimitsPolicy, // every target reads every message: kept until MaxAge
		MaxAge:      s.cfg.Retention,
		Duplicates:  s.cfg.Retention, // idempotency keys are remembered as long as messages
		MaxBytes:    s.cfg.MaxBytes,
		Discard:     jetstream.DiscardNew, // full: refuse appends, never drop accepted messages
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	var info *jetstream.StreamInfo
	err := setUp(func(ctx context.Context) (err error) {
		if q.stream, err = s.js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return err
		}
		info, err = q.stream.Info(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("jetstore: route %q: %w", name, err)
	}
	q.appended.Store(info.State.LastSeq)
	q.sub, err = s.nc.Subscribe(q.notify, q.onNotify)
	if err != nil {
		return nil, fmt.Errorf("jetstore: route %q: %w", name, err)
	}
	if err := q.addTargets(targets); err != nil {
		q.sub.Unsubscribe()
		return nil, err
	}
	return q, nil
}

// addTargets remembers targets not yet known (a reload may add some).
func (q *Queue) addTargets(targets []string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, t := range targets {
		if !slices.Contains(q.targets, t) {
			q.targets = append(q.targets, t)
		}
	}
	return nil
}

// Name is the route's name.
func (q *Queue) Name() string { return q.name }

// Targets are the targets the queue was opened with.
func (q *Queue) Targets() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.targets)
}

// Consumer returns target's consumer, creating its durable JetStream
// consumer if needed; the same target gives the same Consumer.
func (q *Queue) Consumer(target string) (*Consumer, error) {
	return q.ConsumerWith(target, ConsumerOptions{})
}

// ConsumerOptions tune a target's durable consumer.
type ConsumerOptions struct {
	// MaxAckPending bounds the messages handed out and not yet finished
	// (and so a dead node's repeats); 0: 1024 for a new consumer, unchanged
	// for an open one.
	MaxAckPending int
}

// ConsumerWith is Consumer with options. For a target whose consumer is
// open, a different MaxAckPending (a reload changed the target's
// concurrency or batch) updates the durable consumer.
func (q *Queue) ConsumerWith(target string, o ConsumerOptions) (*Consumer, error) {
	update := o.MaxAckPending > 0 // Consumer (no options) changes nothing
	if !update {
		o.MaxAckPending = 1024
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, store.ErrClosed
	}
	if !slices.Contains(q.targets, target) {
		return nil, fmt.Errorf("%w: %q", store.ErrUnknownTarget, target)
	}
	if c := q.consumers[target]; c != nil {
		if update && c.maxAckPending != o.MaxAckPending {
			if _, err := q.durable(target, o); err != nil {
				return nil, err
			}
			c.maxAckPending = o.MaxAckPending
		}
		return c, nil
	}
	c, err := newConsumer(q, target, o)
	if err != nil {
		return nil, err
	}
	q.consumers[target] = c
	return c, nil
}

func (q *Queue) consumer(target string) *Consumer {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.consumers[target]
}

func (q *Queue) close() {
	q.mu.Lock()
	q.closed = true
	cs := q.consumers
	q.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
	q.sub.Unsubscribe()
}

// onNotify wakes the local consumers: "new" after an append on any node,
// "revive <target> <seq>" after a dead letter was revived on any node.
func (q *Queue) onNotify(m *nats.Msg) {
	f := strings.Fields(string(m.Data))
	if len(f) == 3 && f[0] == "revive" {
		if c := q.consumer(f[1]); c != nil {
			if seq, err := strconv.ParseUint(f[2], 10, 64); err == nil {
				c.reloadRetry(seq)
			}
		}
		return
	}
	q.mu.Lock()
	cs := make([]*Consumer, 0, len(q.consumers))
	for _, c := range q.consumers {
		cs = append(cs, c)
	}
	q.mu.Unlock()
	for _, c := range cs {
		c.signal()
	}
}

// Append stores m and returns its id once the stream acknowledged it.
func (q *Queue) Append(ctx context.Context, m *store.Message) (store.ID, error) {
	if m.EnqueuedAt.IsZero() {
		m.EnqueuedAt = time.Now()
	}
	tag := store.NewTag()
	m.ID = store.NewID(0, tag)
	rec := store.EncodeRecord(nil, m)
	id, _, err := q.publish(ctx, rec, tag, m.IdempotencyKey, store.Fingerprint([]byte(m.Method), []byte(m.URI), m.Body))
	if err != nil {
		m.ID = store.ID{}
		return store.ID{}, err
	}
	m.Seq, m.ID = id.Seq(), id
	return id, nil
}

// AppendDraft is Append for a Draft; a key seen within the retention sets
// d.Duplicate and returns the first message's id.
func (q *Queue) AppendDraft(ctx context.Context, d *store.Draft) (store.ID, error) {
	if d.EnqueuedAt.IsZero() {
		d.EnqueuedAt = time.Now()
	}
	tag := store.NewTag()
	id, dup, err := q.publish(ctx, d.Encode(tag), tag, string(d.IdempotencyKey), d.Fingerprint())
	d.Duplicate = dup
	return id, err
}

// publish appends one record; with a key, JetStream's duplicate window
// (the retention) answers a repeat with the first message's seq, whose
// request must be the same one (fp, store.Fingerprint) or the repeat is
// refused with ErrKeyMismatch.
func (q *Queue) publish(ctx context.Context, rec []byte, tag [8]byte, key string, fp [16]byte) (store.ID, bool, error) {
	if len(rec) > store.MaxRecordBytes || int64(len(rec)) > q.s.nc.MaxPayload()-1024 {
		return store.ID{}, false, fmt.Errorf("%w: %d bytes, the servers take %d", store.ErrTooLarge, len(rec), q.s.nc.MaxPayload()-1024)
	}
	msg := &nats.Msg{Subject: q.subject, Data: rec}
	var opts []jetstream.PublishOpt
	if key != "" {
		opts = append(opts, jetstream.WithMsgID(key))
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opTimeout)
		defer cancel()
	}
	ack, err := q.s.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		return store.ID{}, false, q.publishErr(err)
	}
	if ack.Duplicate {
		m, err := q.get(ctx, ack.Sequence)
		if err != nil {
			return store.ID{}, false, fmt.Errorf("route %q: the first message of a repeated idempotency key: %w", q.name, err)
		}
		if store.Fingerprint([]byte(m.Method), []byte(m.URI), m.Body) != fp {
			return store.ID{}, false, fmt.Errorf("%w: route %q", store.ErrKeyMismatch, q.name)
		}
		return m.ID, true, nil
	}
	for {
		old := q.appended.Load()
		if ack.Sequence <= old || q.appended.CompareAndSwap(old, ack.Sequence) {
			break
		}
	}
	q.wake()
	return store.NewID(ack.Sequence, tag), false, nil
}

// wakeDelay gathers the wake-ups of a burst of appends into one message.
const wakeDelay = 2 * time.Millisecond

// wake tells the consumers on every node that messages were appended, at
// most once per wakeDelay (best effort: they poll too).
func (q *Queue) wake() {
	if q.waking.Swap(true) {
		return
	}
	time.AfterFunc(wakeDelay, func() {
		q.waking.Store(false)
		q.s.nc.Publish(q.notify, []byte("new"))
	})
}

func (q *Queue) publishErr(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		d := apiErr.Description
		if strings.Contains(d, "maximum bytes") || strings.Contains(d, "maximum messages") || strings.Contains(d, "insufficient resources") {
			return &store.FullError{Reason: fmt.Sprintf("route %q: stream %s: %s", q.name, q.stream.CachedInfo().Config.Name, d), RetryAfter: time.Second}
		}
		if strings.Contains(d, "message size exceeds") {
			return fmt.Errorf("%w: route %q: %s", store.ErrTooLarge, q.name, d)
		}
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("%w: route %q: %w", store.ErrTooLarge, q.name, err)
	}
	return fmt.Errorf("route %q: %w: publish: %w", q.name, store.ErrIO, err)
}

// getRaw reads the record of seq from the stream (from its leader): a
// missing one is store.ErrNotFound, any other failure store.ErrIO.
func (q *Queue) getRaw(ctx context.Context, seq uint64) ([]byte, error) {
	raw, err := q.stream.GetMsg(ctx, seq)
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: seq %d", store.ErrNotFound, seq)
		}
		return nil, fmt.Errorf("%w: get seq %d: %w", store.ErrIO, seq, err)
	}
	return raw.Data, nil
}

// get reads the message seq from the stream (from its leader).
func (q *Queue) get(ctx context.Context, seq uint64) (*store.Message, error) {
	data, err := q.getRaw(ctx, seq)
	if err != nil {
		return nil, err
	}
	m, err := store.DecodeRecord(data)
	if err != nil {
		return nil, fmt.Errorf("seq %d: %w", seq, err)
	}
	m.Seq = seq
	m.ID = store.NewID(seq, m.ID.Tag())
	return m, nil
}

// Lookup returns the message id names and its status for every target. A
// message with no outcome yet is in flight if this node is attempting it,
// or, on a node that does not hold the target's lease, if the durable
// consumer handed it out (one consumer info); else queued.
func (q *Queue) Lookup(id store.ID) (*store.Message, []store.TargetStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	m, err := q.get(ctx, id.Seq())
	if err != nil {
		return nil, nil, err
	}
	if m.ID != id {
		return nil, nil, fmt.Errorf("%w: %s", store.ErrNotFound, id)
	}
	targets := q.Targets()
	out := make([]store.TargetStatus, len(targets))
	for i, t := range targets {
		st, _, err := q.state(ctx, t, id.Seq())
		if err != nil {
			return nil, nil, err
		}
		if st == nil {
			st = &store.State{Phase: store.Queued}
		}
		if st.Phase == store.Queued {
			// No outcome yet: in flight here, or handed out to the
			// lease holder on another node (as the listing tells).
			v, err := q.view(ctx, t)
			if err != nil {
				return nil, nil, err
			}
			st.Phase = v.phase(id.Seq(), nil)
		} else {
			st.Phase = statePhase(st)
			if c := q.consumer(t); c != nil && c.inFlight(id.Seq()) {
				st.Phase = store.InFlight
			}
		}
		out[i] = store.TargetStatus{Target: t, State: *st}
	}
	return m, out, nil
}

// Keys of the state bucket.
func (q *Queue) stateKey(target string, seq uint64) string {
	return "s." + q.name + "." + target + "." + strconv.FormatUint(seq, 10)
}
func (q *Queue) retryKey(target string, seq uint64) string {
	return "r." + q.name + "." + target + "." + strconv.FormatUint(seq, 10)
}
func (q *Queue) deadKey(target string, seq uint64) string {
	return "d." + q.name + "." + target + "." + strconv.FormatUint(seq, 10)
}

// keySeq is the seq at the end of a state bucket key.
func keySeq(key string) (uint64, bool) {
	i := strings.LastIndexByte(key, '.')
	seq, err := strconv.ParseUint(key[i+1:], 10, 64)
	return seq, err == nil
}

// state reads the recorded state of seq for target; nil if none.
func (q *Queue) state(ctx context.Context, target string, seq uint64) (*store.State, uint64, error) {
	e, err := q.s.state.Get(ctx, q.stateKey(target, seq))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%w: state of seq %d for %q: %w", store.ErrIO, seq, target, err)
	}
	st, err := store.DecodeState(e.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("state of seq %d for %q: %w", seq, target, err)
	}
	return st, e.Revision(), nil
}

func (q *Queue) putState(ctx context.Context, target string, seq uint64, st *store.State) error {
	if _, err := q.s.state.Put(ctx, q.stateKey(target, seq), store.AppendState(nil, st)); err != nil {
		return fmt.Errorf("%w: record the state of seq %d for %q: %w", store.ErrIO, seq, target, err)
	}
	return nil
}

// Stats is a snapshot of the stream and its consumers, reused for up to
// statsTTL.
func (q *Queue) Stats() store.QueueStats {
	q.statsMu.Lock()
	defer q.statsMu.Unlock()
	if time.Since(q.statsAt) < statsTTL {
		return cloneStats(q.stats)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st := store.QueueStats{Name: q.name, Segments: 1, Appended: q.appended.Load()}
	if info, err := q.stream.Info(ctx); err == nil {
		st.Bytes = int64(info.State.Bytes)
		st.Appended = max(st.Appended, info.State.LastSeq)
	}
	for _, t := range q.Targets() {
		ts := store.TargetStats{Target: t}
		if c := q.consumer(t); c != nil {
			ts = c.stats(ctx)
		}
		st.Targets = append(st.Targets, ts)
	}
	q.stats, q.statsAt = st, time.Now()
	return cloneStats(st)
}

func cloneStats(s store.QueueStats) store.QueueStats {
	s.Targets = slices.Clone(s.Targets)
	return s
}

// Appended is the seq of the last message this node appended or saw in the
// stream's info.
func (q *Queue) Appended() uint64 { return q.appended.Load() }

// DeadLetters lists up to limit dead letters of target with seq above
// after, oldest first. It lists the target's dead-letter keys (cost: one
// key per dead letter) and reads each message and state.
func (q *Queue) DeadLetters(target string, after uint64, limit int) ([]store.DeadLetter, error) {
	if !slices.Contains(q.Targets(), target) {
		return nil, fmt.Errorf("%w: %q", store.ErrUnknownTarget, target)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	seqs, err := q.listSeqs(ctx, "d", target)
	if err != nil {
		return nil, err
	}
	var out []store.DeadLetter
	for _, seq := range seqs {
		if seq <= after {
			continue
		}
		if len(out) >= limit {
			break
		}
		m, err := q.get(ctx, seq)
		if errors.Is(err, store.ErrNotFound) {
			continue // expired with the stream
		}
		if err != nil {
			return nil, err
		}
		st, _, err := q.state(ctx, target, seq)
		if err != nil {
			return nil, err
		}
		if st == nil {
			st = &store.State{Phase: store.Dead}
		}
		out = append(out, store.DeadLetter{Target: target, Message: m, State: *st})
	}
	return out, nil
}

// listSeqs lists the seqs of target under a key kind ("r", "d"), sorted.
func (q *Queue) listSeqs(ctx context.Context, kind, target string) ([]uint64, error) {
	kl, err := q.s.state.ListKeysFiltered(ctx, kind+"."+q.name+"."+target+".*")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: list %s keys of %q: %w", store.ErrIO, kind, target, err)
	}
	defer kl.Stop()
	var seqs []uint64
	for k := range kl.Keys() {
		if seq, ok := keySeq(k); ok {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

// Revive makes the dead letter seq of target due again at at, its attempt
// count reset (the history kept, with a note).
func (q *Queue) Revive(ctx context.Context, target string, seq uint64, at time.Time) error {
	return q.leaveDead(ctx, target, seq, func(st *store.State) *store.State {
		return &store.State{Phase: store.Retrying, NextTry: at,
			History: appendHistory(st.History, store.Attempt{At: time.Now(), Error: "replayed from the dead letters by an operator"})}
	}, func() error {
		if err := q.putRetry(ctx, target, seq, at); err != nil {
			return err
		}
		if c := q.consumer(target); c != nil {
			c.schedule(seq, at)
		}
		q.s.nc.Publish(q.notify, fmt.Appendf(nil, "revive %s %d", target, seq))
		return nil
	})
}

// Purge drops the dead letter seq of target from the list; it is Purged:
// finished, never attempted again.
func (q *Queue) Purge(ctx context.Context, target string, seq uint64) error {
	return q.leaveDead(ctx, target, seq, func(st *store.State) *store.State {
		return &store.State{Phase: store.Purged, Attempts: st.Attempts,
			History: appendHistory(st.History, store.Attempt{At: time.Now(), Error: "purged from the dead letters by an operator"})}
	}, nil)
}

func (q *Queue) leaveDead(ctx context.Context, target string, seq uint64, next func(*store.State) *store.State, then func() error) error {
	if !slices.Contains(q.Targets(), target) {
		return fmt.Errorf("%w: %q", store.ErrUnknownTarget, target)
	}
	if _, err := q.s.state.Get(ctx, q.deadKey(target, seq)); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%w: seq %d is not a dead letter of target %q", store.ErrNotFound, seq, target)
		}
		return fmt.Errorf("%w: %w", store.ErrIO, err)
	}
	st, _, err := q.state(ctx, target, seq)
	if err != nil {
		return err
	}
	if st == nil {
		st = &store.State{Phase: store.Dead}
	}
	if err := q.putState(ctx, target, seq, next(st)); err != nil {
		return err
	}
	if then != nil {
		if err := then(); err != nil {
			return err
		}
	}
	if err := q.s.state.Purge(ctx, q.deadKey(target, seq)); err != nil {
		return fmt.Errorf("%w: %w", store.ErrIO, err)
	}
	return nil
}

func (q *Queue) putRetry(ctx context.Context, target string, seq uint64, at time.Time) error {
	if _, err := q.s.state.Put(ctx, q.retryKey(target, seq), strconv.AppendInt(nil, at.UnixNano(), 10)); err != nil {
		return fmt.Errorf("%w: schedule seq %d for %q: %w", store.ErrIO, seq, target, err)
	}
	return nil
}

func appendHistory(h []store.Attempt, a store.Attempt) []store.Attempt {
	h = append(slices.Clone(h), a)
	if len(h) > store.MaxHistory {
		h = h[len(h)-store.MaxHistory:]
	}
	return h
}

// kvBatch publishes writes to the state bucket without waiting for each:
// one round trip (and one quorum write each, pipelined) for the lot.
type kvBatch struct {
	q    *Queue
	idx  []int
	futs []jetstream.PubAckFuture
	errs map[int]error
}

func (q *Queue) newKVBatch() *kvBatch { return &kvBatch{q: q, errs: map[int]error{}} }

func (w *kvBatch) publish(i int, m *nats.Msg) {
	f, err := w.q.s.js.PublishMsgAsync(m)
	if err != nil {
		w.errs[i] = err
		return
	}
	w.idx, w.futs = append(w.idx, i), append(w.futs, f)
}

// put writes value under key, for the item i of the caller's batch.
func (w *kvBatch) put(i int, key string, value []byte) {
	w.publish(i, &nats.Msg{Subject: w.q.s.kvPre + key, Data: value})
}

// purge removes key (a purge marker, expiring with the bucket's TTL).
func (w *kvBatch) purge(i int, key string) {
	m := nats.NewMsg(w.q.s.kvPre + key)
	m.Header.Set("KV-Operation", "PURGE")
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	w.publish(i, m)
}

// wait waits for every acknowledgement (bounded by ctx and opTimeout) and
// sets errs[i] for the items whose writes failed.
func (w *kvBatch) wait(ctx context.Context, errs []error, what string) {
	timeout := time.NewTimer(opTimeout)
	defer timeout.Stop()
	for k, f := range w.futs {
		i := w.idx[k]
		select {
		case <-f.Ok():
		case err := <-f.Err():
			w.errs[i] = err
		case <-ctx.Done():
			w.errs[i] = ctx.Err()
		case <-timeout.C:
			w.errs[i] = context.DeadlineExceeded
			timeout.Reset(0)
		}
	}
	for i, err := range w.errs {
		if errs[i] == nil {
			errs[i] = fmt.Errorf("%w: route %q: %s: %w", store.ErrIO, w.q.name, what, err)
		}
	}
}
