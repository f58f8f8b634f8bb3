package buffer

import (
	"context"

	"github.com/sluice-proxy/sluice/store"
)

// Forwarded requests (store.ForwardRecorder). A spillover route forwards a
// request at once when its target is idle; the proxy then appends a record
// of it without its body, marked with store.ForwardedHeader and the status
// the target answered. The record keeps the request's idempotency key for
// the retention, like any message's, so a repeat is not forwarded again.
// A consumer that reads it does not hand it out: it records it as
// Delivered (attempt 1, the target's status, at the accepted time) through
// the outcome journal, as it marks a damaged record dead; the mark is in
// the record, so a crash before that outcome is durable only makes the
// consumer record it again. Until a consumer has passed it, the record is
// not counted as pending (nor, while the consumer records it, as in
// flight) in Stats (c.fwd), so a spillover route stays idle.
// Cost: one append (group commit, fsync as the sync mode says) per
// forwarded request, ~60 bytes plus method, URI and key.

// FindKey implements store.ForwardRecorder: the sealed segments are
// searched by the caller, the head (whose keys only the writer reads) by
// the writer.
func (q *Queue) FindKey(ctx context.Context, key []byte) (ID, bool, error) {
	h := keyHash(key)
	if id, _, below, found := q.findKey(h); found {
		return id, true, nil
	} else {
		f := &findKeyChange{key: h, checkedBelow: below, waiter: waiter{done: make(chan struct{}, 1)}}
		if err := q.do(ctx, f); err != nil {
			return ID{}, false, err
		}
		if f.found {
			return store.NewID(f.at.seq, f.at.tag), true, nil
		}
	}
	return ID{}, false, nil
}

// AppendForwarded implements store.ForwardRecorder. The writer marks the
// record forwarded for every consumer when it makes it visible (c.fwd), so
// that no moment counts it as pending.
// The record's fingerprint (what a repeat of its key is checked against)
// is the forwarded request's, body included, kept in its ForwardedHeader.
func (q *Queue) AppendForwarded(ctx context.Context, d *Draft, status int) (ID, error) {
	d.Duplicate = false
	fp := d.Fingerprint()
	d.Body = nil
	d.AddHeader([]byte(store.ForwardedHeader), store.ForwardedValue(status, fp))
	var key [16]byte
	var below uint64
	hasKey := len(d.IdempotencyKey) > 0
	if hasKey {
		key = keyHash(d.IdempotencyKey)
		id, stored, b, found := q.findKey(key)
		if found {
			if !sameRequest(stored, fp) {
				return ID{}, ErrKeyMismatch
			}
			d.Duplicate = true
			return id, nil
		}
		below = b
	}
	tag := newTag()
	if d.EnqueuedAt.IsZero() {
		d.EnqueuedAt = q.cfg.Now()
	}
	a := getAppend()
	a.rec, a.tag, a.fwd = d.Encode(tag), tag, true
	a.key, a.hasKey, a.checkedBelow, a.fp = key, hasKey, below, fp
	if err := q.do(ctx, a); err != nil {
		return ID{}, err
	}
	if a.mismatch {
		putAppend(a)
		return ID{}, ErrKeyMismatch
	}
	id := store.NewID(a.seq, a.tag)
	d.Duplicate = a.dup
	putAppend(a)
	return id, nil
}

// markForwarded records, for every consumer, that seq is a forwarded
// record not yet finished. Writer, under q.mu, as it makes seq visible.
func (q *Queue) markForwarded(seq uint64) {
	for _, c := range q.consumers {
		if c.fwd == nil {
			c.fwd = map[uint64]struct{}{}
		}
		c.fwd[seq] = struct{}{}
	}
}

// forwardedAhead counts the forwarded records c has not passed yet and
// those it holds in flight while it records them delivered, and forgets
// the ones it has finished. Caller holds q.mu.
func (c *Consumer) forwardedAhead() (pending uint64, inflight int) {
	for seq := range c.fwd {
		_, busy := c.inflight[seq]
		if busy {
			inflight++
		}
		if seq >= c.next {
			pending++
		} else if !busy {
			delete(c.fwd, seq)
		}
	}
	return pending, inflight
}

// findKeyChange asks the writer whether a key is in the head (whose keys
// only the writer reads) or in a segment from checkedBelow on (rolled
// since the caller looked). It writes nothing; the writer answers it after
// the appends of its commit.
type findKeyChange struct {
	waiter
	key          [16]byte // hash of the key
	checkedBelow uint64   // segments starting below this were searched by the caller
	found        bool     // set by the writer
	at           keyTarget
}

func (f *findKeyChange) collect(_ *Queue, c *commitSet) { c.finds = append(c.finds, f) }
func (f *findKeyChange) settle(*Queue)                  {}

// run looks the key up. Writer only.
func (f *findKeyChange) run(q *Queue) {
	q.mu.Lock()
	head := q.segs[len(q.segs)-1]
	q.mu.Unlock()
	if t, ok := head.log.keys[f.key]; ok {
		f.found, f.at = true, t
		return
	}
	if t, ok := q.findKeyFrom(f.checkedBelow, head, f.key); ok {
		f.found, f.at = true, t
	}
}

// forwardedState is the outcome a consumer records for a forwarded record.
func forwardedState(m *Message, status int) *State {
	return &State{Phase: Delivered, Attempts: 1, History: []Attempt{{N: 1, At: m.EnqueuedAt, Status: status}}}
}

var _ store.ForwardRecorder = (*Queue)(nil)
