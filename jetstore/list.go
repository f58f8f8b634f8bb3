package jetstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sluice-proxy/sluice/store"
)

// Listing and counting (store.Lister). Messages walks the route's stream by
// seq, a page of at most limit messages per call: the records come from an
// ephemeral consumer started at the page's first seq (or, for a few, one
// get each), listBatch at a time, so memory is one batch of records; the
// batch's (message, target) states are read with batched direct gets, at
// most maxMulti a request (older servers: one get each, listGets at once).
// Counts with no time bounds reads no record: it watches the target's s.
// keys (one entry each, streamed) and counts the stream's other messages as
// queued or in flight, less the seqs removed from the stream (see span). A count within time bounds walks the stream like a
// listing (the accepted time is in the record).
//
// What the engine cannot know: a message the stream's retention (MaxAge)
// deleted is gone, record and all, so nothing is ever Expired here: the
// listing and the counts cover the messages the stream holds. In flight is
// exact on the node that holds the target's lease (its attempts under way);
// while another node holds it, a node sees as in flight every message the
// durable consumer handed out and has no outcome for, including those the
// holder gave back to try again, and a retry under way there as retrying;
// while no node holds it, nothing is in flight.

const (
	// listBatch is the number of records read at once.
	listBatch = 64
	// listGets is the number of key-value gets in flight at once.
	listGets = 32
	// listByGet: pages of at most this many messages read each record with
	// one get rather than through an ephemeral consumer.
	listByGet = 8
	// listIdle bounds the wait for the next entry of a count's watch.
	listIdle = opTimeout
)

// statePhase is the phase a recorded state stands for: a purge before the
// Purged phase was written kept Dead with a note.
func statePhase(st *store.State) store.Phase {
	if st.Phase == store.Dead {
		if a, ok := st.Last(); ok && a.Status == 0 && strings.HasPrefix(a.Error, "purged from the dead letters") {
			return store.Purged
		}
	}
	return st.Phase
}

// targetView is what a node knows of a target's messages in flight at one
// moment: its own attempts under way, whether it holds the lease, and, if
// another node holds it, the durable consumer's ack floor and last
// handed-out seq.
type targetView struct {
	holder          bool
	local           map[uint64]bool // this node's attempts under way
	floor, handed   uint64          // ack floor, last handed out (stream seqs)
	hasConsumerInfo bool
}

func (q *Queue) view(ctx context.Context, target string) (*targetView, error) {
	v := &targetView{local: map[uint64]bool{}}
	c := q.consumer(target)
	if c != nil {
		v.holder = c.Holds()
		c.mu.Lock()
		for seq := range c.inflight {
			v.local[seq] = true
		}
		c.mu.Unlock()
	}
	if v.holder {
		return v, nil
	}
	// No holder (its lease expired or was given up): nothing is being
	// attempted, and what the consumer handed out was given back or is
	// waiting to be handed out again.
	if _, err := q.s.leases.Get(ctx, q.name+"."+target); errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, nil
	} else if err != nil {
		return nil, fmt.Errorf("%w: route %q: target %q: lease: %w", store.ErrIO, q.name, target, err)
	}
	var info *jetstream.ConsumerInfo
	var err error
	if c != nil {
		info, err = c.cons.Info(ctx)
	} else {
		var cons jetstream.Consumer
		if cons, err = q.stream.Consumer(ctx, target); err == nil {
			info, err = cons.Info(ctx)
		}
	}
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return v, nil // never drained: every message is queued
	}
	if err != nil {
		return nil, fmt.Errorf("%w: route %q: target %q: consumer info: %w", store.ErrIO, q.name, target, err)
	}
	v.floor, v.handed, v.hasConsumerInfo = info.AckFloor.Stream, info.Delivered.Stream, true
	return v, nil
}

// phase is where seq stands for the target, given its state (nil: none).
func (v *targetView) phase(seq uint64, st *store.State) store.Phase {
	switch {
	case v.local[seq]:
		return store.InFlight
	case st != nil:
		return statePhase(st)
	case !v.holder && seq > v.floor && seq <= v.handed:
		return store.InFlight // handed out to the holder, no outcome yet
	}
	return store.Queued
}

func (q *Queue) checkTarget(target string) error {
	if !slices.Contains(q.Targets(), target) {
		return fmt.Errorf("%w: %q", store.ErrUnknownTarget, target)
	}
	return nil
}

// bounds is the stream's first and last seq now; first > last when empty.
func (q *Queue) bounds(ctx context.Context) (first, last uint64, err error) {
	info, err := q.stream.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: route %q: stream info: %w", store.ErrIO, q.name, err)
	}
	if info.State.Msgs == 0 {
		return info.State.LastSeq + 1, info.State.LastSeq, nil
	}
	return info.State.FirstSeq, info.State.LastSeq, nil
}

// Messages implements store.Lister: at most limit messages (default 1000)
// with a seq above after, looked at in one call.
func (q *Queue) Messages(f store.Filter, after uint64, limit int, fn func(*store.Row) bool) (uint64, bool, error) {
	targets := q.Targets()
	if f.Target != "" {
		if err := q.checkTarget(f.Target); err != nil {
			return after, false, err
		}
		targets = []string{f.Target}
	}
	if limit <= 0 {
		limit = 1000
	}
	match := func(m *store.Message, sts []*store.State, views []*targetView) *store.Row {
		if !f.Since.IsZero() && m.EnqueuedAt.Before(f.Since) || !f.Until.IsZero() && !m.EnqueuedAt.Before(f.Until) {
			return nil
		}
		if f.Key != "" && m.IdempotencyKey != f.Key {
			return nil
		}
		row := &store.Row{ID: m.ID, Key: m.IdempotencyKey, AcceptedAt: m.EnqueuedAt}
		ok := f.Phase == "" && f.Status == 0
		for i, t := range targets {
			rt := rowTarget(t, views[i].phase(m.Seq, sts[i]), sts[i])
			if (f.Phase == "" || rt.Phase == f.Phase) && (f.Status == 0 || rt.Status == f.Status) {
				ok = true
			}
			row.Targets = append(row.Targets, rt)
		}
		if !ok {
			return nil
		}
		return row
	}
	return q.walk(targets, after, limit, func(m *store.Message, sts []*store.State, views []*targetView) bool {
		if row := match(m, sts, views); row != nil {
			return fn(row)
		}
		return true
	})
}

// rowTarget is a listed message's standing for target.
func rowTarget(target string, p store.Phase, st *store.State) store.RowTarget {
	rt := store.RowTarget{Target: target, Phase: p}
	if st == nil {
		return rt
	}
	rt.Attempts = st.Attempts
	if a, ok := st.Last(); ok {
		rt.Status, rt.At = a.Status, a.At
		if p == store.Dead || p == store.Purged {
			rt.Reason = a.Error
		}
	}
	return rt
}

// walk calls fn for each message with a seq above after, in seq order, with
// its state for each of targets (nil: none) and the targets' views taken
// before the page was read, until fn returns false or limit messages were
// looked at. It returns the last seq looked at and whether that was the
// stream's last message when the call began. Each request to the servers
// has its own timeout (opTimeout), not the walk as a whole.
func (q *Queue) walk(targets []string, after uint64, limit int, fn func(*store.Message, []*store.State, []*targetView) bool) (uint64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	first, lastSeq, err := q.bounds(ctx)
	if err != nil {
		return after, false, err
	}
	from := max(after+1, first)
	if from > lastSeq {
		return max(after, lastSeq), true, nil
	}
	to := min(lastSeq, from+uint64(limit)-1)
	views := make([]*targetView, len(targets))
	for i, t := range targets {
		if views[i], err = q.view(ctx, t); err != nil {
			return after, false, err
		}
	}
	last := after
	stopped := false
	each := func(ms []*store.Message) error {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		sts, err := q.states(ctx, targets, ms)
		if err != nil {
			return err
		}
		for i, m := range ms {
			last = m.Seq
			if !fn(m, sts[i*len(targets):(i+1)*len(targets)], views) {
				stopped = true
				return nil
			}
		}
		return nil
	}
	if err := q.records(from, to, func(ms []*store.Message) bool {
		if err = each(ms); err != nil {
			return false
		}
		return !stopped
	}); err != nil {
		return last, false, err
	}
	if err != nil || stopped {
		return last, false, err
	}
	return to, to >= lastSeq, nil
}

// records reads the messages from..to of the stream, listBatch at a time,
// and calls fn with each batch (in seq order; seqs the retention deleted
// meanwhile are missing) until fn returns false.
func (q *Queue) records(from, to uint64, fn func([]*store.Message) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if to-from+1 <= listByGet {
		var ms []*store.Message
		for seq := from; seq <= to; seq++ {
			m, err := q.getRecord(ctx, seq)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			ms = append(ms, m)
		}
		if len(ms) > 0 {
			fn(ms)
		}
		return nil
	}
	cons, err := q.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "sluice listing of route " + q.name,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute, // a slow reader of the page (an export to a slow client) keeps it
		MemoryStorage:     true,
		Replicas:          1,
	})
	if err != nil {
		return fmt.Errorf("%w: route %q: a reading consumer: %w", store.ErrIO, q.name, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		q.stream.DeleteConsumer(dctx, cons.CachedInfo().Name) // else it goes after InactiveThreshold
	}()
	// pending is the number of messages at from and above when the
	// consumer began: with none left, a page ending on a removed seq stops
	// rather than wait out the fetch for it.
	pending := cons.CachedInfo().NumPending
	next := from
	for next <= to && pending > 0 {
		n := int(min(uint64(listBatch), to-next+1, pending))
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(opTimeout/2))
		if err != nil {
			return fmt.Errorf("%w: route %q: read seq %d: %w", store.ErrIO, q.name, next, err)
		}
		ms := make([]*store.Message, 0, n)
		for msg := range batch.Messages() {
			meta, err := msg.Metadata()
			if err != nil {
				return fmt.Errorf("%w: route %q: %w", store.ErrIO, q.name, err)
			}
			seq := meta.Sequence.Stream
			if seq > to {
				break
			}
			next = seq + 1
			pending = min(pending-1, meta.NumPending)
			ms = append(ms, decodeListed(seq, msg.Data()))
			if seq == to {
				break
			}
		}
		if err := batch.Error(); err != nil && !benignFetchErr(err) {
			return fmt.Errorf("%w: route %q: read seq %d: %w", store.ErrIO, q.name, next, err)
		}
		if len(ms) == 0 {
			return nil // the rest was deleted meanwhile (retention)
		}
		if !fn(ms) {
			return nil
		}
	}
	return nil
}

// getRecord reads one message for a listing: a damaged record is listed
// with its seq and no head.
func (q *Queue) getRecord(ctx context.Context, seq uint64) (*store.Message, error) {
	data, err := q.getRaw(ctx, seq)
	if err != nil {
		return nil, err
	}
	return decodeListed(seq, data), nil
}

func decodeListed(seq uint64, data []byte) *store.Message {
	m, err := store.DecodeRecord(data)
	if err != nil {
		return &store.Message{Seq: seq, ID: store.NewID(seq, [8]byte{})}
	}
	m.Seq, m.ID = seq, store.NewID(seq, m.ID.Tag())
	m.Body, m.Header = nil, nil // a listing shows no body: let it go with the batch
	return m
}

// states reads the state of every (message, target): out[i*len(targets)+t]
// is ms[i]'s for targets[t] (nil: none). Batched direct gets of the state
// bucket's last entries for those keys (NATS 2.11's multi_last), at most
// maxMulti keys a request: one request for a batch of 64 records with up
// to 16 targets, ceil(64*targets/1024) with more. A few keys, or a server
// that does not answer it, get one get per key, listGets at a time.
func (q *Queue) states(ctx context.Context, targets []string, ms []*store.Message) ([]*store.State, error) {
	if n := len(ms) * len(targets); n > listByGet && !q.s.noMulti.Load() {
		out, err := q.statesMulti(ctx, targets, ms)
		if !errors.Is(err, errNoMulti) {
			return out, err
		}
		q.s.noMulti.Store(true)
		q.s.log.Warn("jetstream: the servers do not answer batched direct gets (NATS 2.11 and later do); listing reads one state at a time", "err", err)
	}
	return q.statesEach(ctx, targets, ms)
}

// maxMulti is the most keys a multi_last direct get is asked for:
// nats-server answers at most 1024 results a request (more is an error,
// 413 Too Many Results, not a shorter answer), and each key has at most one.
const maxMulti = 1024

// errNoMulti: the servers refused a batched direct get.
var errNoMulti = errors.New("batched direct get refused")

// statesMulti is states with batched direct gets, maxMulti keys a request,
// one request after the other on one reply subscription.
func (q *Queue) statesMulti(ctx context.Context, targets []string, ms []*store.Message) ([]*store.State, error) {
	out := make([]*store.State, len(ms)*len(targets))
	index := make(map[string]int, len(out))
	subjects := make([]string, 0, len(out))
	for i, m := range ms {
		for t, name := range targets {
			subj := q.s.kvPre + q.stateKey(name, m.Seq)
			index[subj] = i*len(targets) + t
			subjects = append(subjects, subj)
		}
	}
	inbox := q.s.nc.NewRespInbox()
	sub, err := q.s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("%w: route %q: read states: %w", store.ErrIO, q.name, err)
	}
	defer sub.Unsubscribe()
	for chunk := range slices.Chunk(subjects, maxMulti) {
		if err := q.multiLast(ctx, sub, inbox, chunk, index, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// multiLast asks for the last entries of subjects (at most maxMulti) with
// one batched direct get answered on inbox (sub), and decodes each into
// out[index[its subject]].
func (q *Queue) multiLast(ctx context.Context, sub *nats.Subscription, inbox string, subjects []string, index map[string]int, out []*store.State) error {
	req, err := json.Marshal(struct {
		MultiLastFor []string `json:"multi_last"`
		Batch        int      `json:"batch"`
	}{subjects, len(subjects)})
	if err != nil {
		return err
	}
	if err := q.s.nc.PublishRequest("$JS.API.DIRECT.GET.KV_"+q.s.cfg.StreamPrefix+"_state", inbox, req); err != nil {
		return fmt.Errorf("%w: route %q: read states: %w", store.ErrIO, q.name, err)
	}
	for range len(subjects) + 1 {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return fmt.Errorf("%w: route %q: read states: %w", store.ErrIO, q.name, err)
		}
		switch status := msg.Header.Get("Status"); status {
		case "":
		case "204", "404": // the end, or none of the keys has an entry
			return nil
		case "408", "503":
			return fmt.Errorf("%w: status %s %s", errNoMulti, status, msg.Header.Get("Description"))
		default:
			return fmt.Errorf("%w: route %q: read states: status %s %s", store.ErrIO, q.name, status, msg.Header.Get("Description"))
		}
		k, ok := index[msg.Header.Get("Nats-Subject")]
		if !ok || msg.Header.Get("KV-Operation") != "" { // a deleted or purged key: no state
			continue
		}
		st, err := store.DecodeState(msg.Data)
		if err != nil {
			return fmt.Errorf("state of %s: %w", msg.Header.Get("Nats-Subject"), err)
		}
		out[k] = st
	}
	return fmt.Errorf("%w: route %q: read states: no end of batch", store.ErrIO, q.name)
}

// statesEach is states with one get per key, listGets at a time.
func (q *Queue) statesEach(ctx context.Context, targets []string, ms []*store.Message) ([]*store.State, error) {
	out := make([]*store.State, len(ms)*len(targets))
	errs := make([]error, len(out))
	sem := make(chan struct{}, listGets)
	var wg sync.WaitGroup
	for i, m := range ms {
		for t, name := range targets {
			sem <- struct{}{}
			wg.Add(1)
			go func(k int, name string, seq uint64) {
				defer func() { <-sem; wg.Done() }()
				out[k], _, errs[k] = q.state(ctx, name, seq)
			}(i*len(targets)+t, name, m.Seq)
		}
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// Counts implements store.Lister: target's messages accepted in [since,
// until) (zero: open) by phase, over the messages the stream holds (none is
// ever Expired: see above).
func (q *Queue) Counts(target string, since, until time.Time) (store.Counts, error) {
	if err := q.checkTarget(target); err != nil {
		return store.Counts{}, err
	}
	if !since.IsZero() || !until.IsZero() {
		return q.countWalk(target, since, until)
	}
	return q.countAll(target)
}

// countAll counts every message the stream holds for target: each state
// entry of the target once, from a watch of its s. keys; the stream's
// other messages are queued, or in flight (see targetView).
func (q *Queue) countAll(target string) (store.Counts, error) {
	c := store.Counts{Target: target}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ictx, icancel := context.WithTimeout(ctx, opTimeout)
	v, err := q.view(ictx, target)
	if err == nil {
		var h span
		h, err = q.span(ictx)
		icancel()
		if err != nil {
			return c, err
		}
		if h.first > h.last {
			return c, nil
		}
		if h.tooGappy {
			return q.countWalk(target, time.Time{}, time.Time{})
		}
		return q.countWatch(ctx, target, v, h)
	}
	icancel()
	return c, err
}

// countDeletedMax is the most seqs removed inside the stream that a count
// asks the server for (8 bytes each in memory, some 10 in the answer);
// with more, a count walks the records.
var countDeletedMax = 1 << 16

// span is the stream's seqs now: first..last (first > last: empty) less
// deleted, the seqs removed inside that span (sorted). Seqs can have gaps:
// an operator removed a message (nats stream rmm), or the server lost some
// in a damaged block; the retention only moves first. tooGappy: more than
// countDeletedMax are gone, deleted was not asked for.
type span struct {
	first, last uint64
	deleted     []uint64
	tooGappy    bool
}

func (q *Queue) span(ctx context.Context) (span, error) {
	info, err := q.stream.Info(ctx)
	if err != nil {
		return span{}, fmt.Errorf("%w: route %q: stream info: %w", store.ErrIO, q.name, err)
	}
	st := info.State
	if st.Msgs == 0 {
		return span{first: st.LastSeq + 1, last: st.LastSeq}, nil
	}
	h := span{first: st.FirstSeq, last: st.LastSeq}
	switch gone := st.LastSeq - st.FirstSeq + 1 - st.Msgs; {
	case gone == 0:
		return h, nil
	case gone > uint64(countDeletedMax):
		h.tooGappy = true
		return h, nil
	}
	info, err = q.stream.Info(ctx, jetstream.WithDeletedDetails(true))
	if err != nil {
		return span{}, fmt.Errorf("%w: route %q: stream info: %w", store.ErrIO, q.name, err)
	}
	st = info.State
	if st.Msgs == 0 {
		return span{first: st.LastSeq + 1, last: st.LastSeq}, nil
	}
	h = span{first: st.FirstSeq, last: st.LastSeq, deleted: slices.Clone(st.Deleted)}
	slices.Sort(h.deleted)
	h.deleted = slices.Compact(h.deleted)
	return h, nil
}

// gone tells whether seq was removed from inside the span.
func (h *span) gone(seq uint64) bool {
	_, ok := slices.BinarySearch(h.deleted, seq)
	return ok
}

// count is the number of messages held in lo..hi.
func (h *span) count(lo, hi uint64) uint64 {
	lo, hi = max(lo, h.first), min(hi, h.last)
	if lo > hi {
		return 0
	}
	i, _ := slices.BinarySearch(h.deleted, lo)
	j, _ := slices.BinarySearch(h.deleted, hi+1)
	return hi - lo + 1 - uint64(j-i)
}

// countWalk counts target's messages accepted in [since, until) (zero:
// open) by reading every record: a count within time bounds, or one of a
// stream with too many gaps to ask the server for.
func (q *Queue) countWalk(target string, since, until time.Time) (store.Counts, error) {
	c := store.Counts{Target: target}
	var after uint64
	for range 1 << 30 {
		last, end, err := q.walk([]string{target}, after, 4096, func(m *store.Message, sts []*store.State, views []*targetView) bool {
			if !since.IsZero() && m.EnqueuedAt.Before(since) || !until.IsZero() && !m.EnqueuedAt.Before(until) {
				return true
			}
			c.Add(views[0].phase(m.Seq, sts[0]))
			return true
		})
		if err != nil || end || last <= after {
			return c, err
		}
		after = last
	}
	return c, nil
}

func (q *Queue) countWatch(ctx context.Context, target string, v *targetView, h span) (store.Counts, error) {
	first, last := h.first, h.last
	c := store.Counts{Target: target}
	w, err := q.s.state.Watch(ctx, "s."+q.name+"."+target+".*", jetstream.IgnoreDeletes())
	if err != nil {
		return c, fmt.Errorf("%w: route %q: target %q: watch the states: %w", store.ErrIO, q.name, target, err)
	}
	defer w.Stop()
	var stated, localStated, handedStated uint64
	idle := time.NewTimer(listIdle)
	defer idle.Stop()
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-idle.C:
			return c, fmt.Errorf("%w: route %q: target %q: the states' watch stalled", store.ErrIO, q.name, target)
		}
		if e == nil {
			break // every state read: the rest would be updates
		}
		idle.Reset(listIdle)
		seq, ok := keySeq(e.Key())
		if !ok || seq < first || seq > last || h.gone(seq) {
			continue // a message deleted (retention, operator), or appended after the count began
		}
		st, err := store.DecodeState(e.Value())
		if err != nil {
			continue // undecodable: counted as queued, as Lookup shows it
		}
		stated++
		switch {
		case v.local[seq]:
			localStated++
			c.Add(store.InFlight)
		default:
			c.Add(statePhase(st))
		}
		if seq > v.floor && seq <= v.handed {
			handedStated++
		}
	}
	all := h.count(first, last)
	none := all - min(all, stated) // messages with no outcome yet
	var inflight uint64
	if v.holder {
		var local uint64
		for seq := range v.local {
			if seq >= first && seq <= last && !h.gone(seq) {
				local++
			}
		}
		inflight = local - min(local, localStated)
	} else if n := h.count(v.floor+1, v.handed); n > 0 {
		inflight = n - min(n, handedStated)
	}
	inflight = min(inflight, none)
	c.Accepted += none
	c.InFlight += inflight
	c.Queued += none - inflight
	return c, nil
}

var (
	_ store.Lister   = (*Queue)(nil)
	_ store.Replayer = (*Queue)(nil)
)
