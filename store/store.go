package store

import (
	"context"
	"time"
)

// Queue is one route's durable queue, as the proxy uses it: append, look up,
// and report progress. Every method is safe for concurrent use.
type Queue interface {
	// Name is the route's name.
	Name() string
	// Targets are the targets the queue keeps a cursor for, in policy order.
	Targets() []string
	// Append stores m and returns its id once it is durable (as the
	// engine's sync mode promises). It sets m.Seq and m.ID. Errors:
	// ErrFull (a *FullError), ErrTooLarge, ErrClosed, ErrIO, or the
	// context's.
	Append(ctx context.Context, m *Message) (ID, error)
	// AppendDraft is Append for a Draft, without intermediate strings.
	// With an IdempotencyKey seen on this queue within the retention, it
	// stores nothing: for the same request (the same Fingerprint: method,
	// URI and body) it sets d.Duplicate and returns the first message's id;
	// for another request it returns ErrKeyMismatch. The engine keeps the
	// fingerprint as long as the key, across restarts.
	AppendDraft(ctx context.Context, d *Draft) (ID, error)
	// Lookup returns the message id names and its status for every target,
	// or ErrNotFound (including a right seq with a wrong tag).
	Lookup(id ID) (*Message, []TargetStatus, error)
	// Stats is a snapshot of sizes and cursors, cheap enough per request.
	Stats() QueueStats
	// Appended is the seq of the last message appended, cheaper than Stats.
	Appended() uint64
}

// Consumer is one target's view of a queue, as a drainer uses it. Fetch and
// Complete are safe for concurrent use.
type Consumer interface {
	// Target is the target's name.
	Target() string
	// Fetch returns up to max messages to attempt now: due retries first,
	// then messages never attempted, in seq order. Each is in flight until
	// Complete or Release. It does not block.
	Fetch(max int, now time.Time) ([]*Delivery, error)
	// Ready is signalled after new messages are committed; one signal may
	// stand for many.
	Ready() <-chan struct{}
	// NextRetry returns when the earliest retry not in flight is due.
	NextRetry() (time.Time, bool)
	// Complete records the outcome of the attempt d and returns once it is
	// durable. If it fails (ErrIO), d stays in flight: the caller may try
	// again, or Release it.
	Complete(ctx context.Context, d *Delivery, out Outcome) error
	// Release gives back a fetched message without an outcome: it is due
	// again at once.
	Release(d *Delivery)
}

// BatchAppender is an optional extension of Queue: AppendDraft for many
// drafts at once, all or nothing: the drafts of a call are stored together
// or refused together (ids[i], errs[i] are AppendDraft's for ds[i]; a
// draft whose key was stored before is a duplicate, or ErrKeyMismatch for
// another request, either way). An engine
// may commit a call larger than its commits in chunks, each all or
// nothing, and documents the chunk size (buffer: 4096). The log ingest of
// the proxy uses it when the queue has it.
type BatchAppender interface {
	AppendDrafts(ctx context.Context, ds []*Draft) (ids []ID, errs []error)
}

// BatchCompleter is an optional extension of Consumer: Complete for many
// attempts at once, sharing the engine's commits; errs[i] is Complete's
// error for ds[i]. It keeps neither slice after it returns: the caller
// reuses them. A drainer records with it when the consumer has it.
type BatchCompleter interface {
	CompleteBatch(ctx context.Context, ds []*Delivery, outs []Outcome) (errs []error)
}

// Parker is an optional extension of Consumer for ordering and fairness: a
// message can wait (parked) behind an earlier one with the same key hash
// (KeyHash) without holding a slot, and be made due again later.
type Parker interface {
	// Park records d as parked under key instead of attempting it.
	Park(ctx context.Context, d *Delivery, key [16]byte) error
	// NextParked returns the oldest message parked under key.
	NextParked(key [16]byte) (seq uint64, ok bool, err error)
	// ParkedKeys calls fn for every key with parked messages and the oldest
	// seq parked under it, until fn returns false.
	ParkedKeys(fn func(key [16]byte, oldest uint64) bool) error
	// Unpark makes the parked message seq due at at (a retry, attempt count
	// unchanged).
	Unpark(ctx context.Context, seq uint64, key [16]byte, at time.Time) error
	// UnparkN unparks up to n of the oldest messages parked under key; all
	// reports whether none is left.
	UnparkN(ctx context.Context, key [16]byte, n int, at time.Time) (seqs []uint64, all bool, err error)
	// Cursor returns the seq of the next message never fetched.
	Cursor() uint64
	// EachRetry calls fn for every message in the retry schedule with its
	// due time, until fn returns false.
	EachRetry(fn func(m *Message, due time.Time) bool) error
}

// DeadLetter is a message that failed for good for one target.
type DeadLetter struct {
	Target  string
	Message *Message
	State   State
}

// DeadLetters is an optional extension of Queue: the dead letters of each
// target, listed, revived into the retry schedule, or purged.
type DeadLetters interface {
	// DeadLetters lists up to limit dead letters of target with seq above
	// after, oldest first.
	DeadLetters(target string, after uint64, limit int) ([]DeadLetter, error)
	// Revive makes a dead letter due again at at.
	Revive(ctx context.Context, target string, seq uint64, at time.Time) error
	// Purge drops a dead letter from the list (its state stays Dead).
	Purge(ctx context.Context, target string, seq uint64) error
}
