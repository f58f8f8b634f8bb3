package store

import (
	"context"
	"fmt"
	"time"
)

// Filter selects messages for Lister.Messages. Zero fields select all.
type Filter struct {
	// Target restricts the rows to one target: a message is listed with
	// that target's state only. Empty: every target.
	Target string
	// Phase keeps the messages in that phase (for Target, or for any
	// target when Target is empty).
	Phase Phase
	// Since and Until bound the accepted time: Since <= at < Until.
	Since, Until time.Time
	// Status keeps the messages whose last attempt (for Target, or any
	// target) got this HTTP status code.
	Status int
	// Key keeps the messages with this idempotency key.
	Key string
}

// Row is one message as Lister.Messages lists it: never its body.
type Row struct {
	ID         ID
	Key        string // the idempotency key, if any
	AcceptedAt time.Time
	Targets    []RowTarget
}

// RowTarget is where a listed message stands for one target.
type RowTarget struct {
	Target   string
	Phase    Phase
	Status   int       // the last attempt's HTTP status; 0 when none or no answer
	Attempts int       // attempts made
	At       time.Time // when it was delivered, died, was purged or expired; else the last attempt's time
	Reason   string    // dead, purged, expired: why (the last error, or what the retention cut short)
}

// Counts are one target's messages by phase. Every message an engine
// holds for the target (or, expired, remembers) is in exactly one phase,
// so Accepted = Delivered + Dead + Expired + Purged + Pending().
type Counts struct {
	Target    string `json:"target"`
	Accepted  uint64 `json:"accepted"`
	Delivered uint64 `json:"delivered"`
	Dead      uint64 `json:"dead"`
	Expired   uint64 `json:"expired"`
	Purged    uint64 `json:"purged"`
	Queued    uint64 `json:"queued"`
	InFlight  uint64 `json:"in_flight"`
	Retrying  uint64 `json:"retrying"`
	Parked    uint64 `json:"parked"`
}

// Add counts one accepted message in phase p. It is the one place where a
// phase becomes a count: engines, the admin API, the metrics and inspect
// all count through it.
func (c *Counts) Add(p Phase) {
	c.Accepted++
	switch p {
	case Delivered:
		c.Delivered++
	case Dead:
		c.Dead++
	case Expired:
		c.Expired++
	case Purged:
		c.Purged++
	case InFlight:
		c.InFlight++
	case Retrying:
		c.Retrying++
	case Parked:
		c.Parked++
	default:
		c.Queued++
	}
}

// Merge adds o's counts to c.
func (c *Counts) Merge(o Counts) {
	c.Accepted += o.Accepted
	c.Delivered += o.Delivered
	c.Dead += o.Dead
	c.Expired += o.Expired
	c.Purged += o.Purged
	c.Queued += o.Queued
	c.InFlight += o.InFlight
	c.Retrying += o.Retrying
	c.Parked += o.Parked
}

// Pending is what is not finished: queued, in flight, retrying, parked.
func (c Counts) Pending() uint64 { return c.Queued + c.InFlight + c.Retrying + c.Parked }

// Finished is what is: delivered, dead, expired, purged.
func (c Counts) Finished() uint64 { return c.Delivered + c.Dead + c.Expired + c.Purged }

// Check reports an error when the identity Accepted = Finished + Pending
// does not hold (counts built by hand, or decoded from elsewhere).
func (c Counts) Check() error {
	if c.Accepted != c.Finished()+c.Pending() {
		return fmt.Errorf("target %q: accepted %d != delivered %d + dead %d + expired %d + purged %d + pending %d",
			c.Target, c.Accepted, c.Delivered, c.Dead, c.Expired, c.Purged, c.Pending())
	}
	return nil
}

// Lister is an optional extension of Queue: every message it holds (and
// the expired ones it still remembers), listed by seq with where each
// stands for each target, and counted by phase. It reads, and changes
// nothing. The admin API's message list and counts, sluice reconcile and
// the metrics' counts use it.
type Lister interface {
	// Messages calls fn for each message matching f with a seq above
	// after, in seq order, until fn returns false or limit messages were
	// looked at (matching or not: the bound on one call's work). It
	// returns the seq of the last message looked at, to pass as after for
	// the rest, and whether the queue was read to its end.
	Messages(f Filter, after uint64, limit int, fn func(*Row) bool) (last uint64, end bool, err error)
	// Counts counts target's messages accepted in [since, until) (zero:
	// open) by phase.
	Counts(target string, since, until time.Time) (Counts, error)
}

// Replayer is an optional extension of Queue: a delivered or dead message
// put back into a target's retry schedule (after a downstream restored a
// backup, say), due at at, and recorded in its history as an operator's
// replay. The drainer then delivers it through the target's limiter. A
// message in another phase is ErrNotFound.
type Replayer interface {
	Replay(ctx context.Context, target string, seq uint64, at time.Time) error
}
