package store

import "time"

// Phase is where a message stands for one target.
type Phase string

// The phases a message goes through for each target.
const (
	Queued    Phase = "queued"    // not yet attempted
	InFlight  Phase = "in_flight" // fetched by the drainer, outcome not yet recorded
	Retrying  Phase = "retrying"  // failed, scheduled again at NextTry
	Delivered Phase = "delivered" // the target answered with success
	Dead      Phase = "dead"      // failed for good; kept as a dead letter
	Parked    Phase = "parked"    // waits behind an earlier message with the same key (Parker)
	Purged    Phase = "purged"    // a dead letter an operator purged: finished, off the dead-letter list
	Expired   Phase = "expired"   // the retention deleted it before the target finished it (Lister)
)

// Phases lists every phase, in the order counts and reports show them.
var Phases = []Phase{Queued, InFlight, Retrying, Parked, Delivered, Dead, Expired, Purged}

// Valid reports whether p is one of Phases.
func (p Phase) Valid() bool {
	for _, q := range Phases {
		if p == q {
			return true
		}
	}
	return false
}

// MaxHistory bounds the attempts kept per message and target.
const MaxHistory = 32

// Attempt is one try to deliver a message to a target.
type Attempt struct {
	N        int           `json:"n"`
	At       time.Time     `json:"at"`
	Status   int           `json:"status,omitempty"` // HTTP status; 0 when no response
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns,omitempty"`
}

// State is the recorded outcome of a message for one target.
type State struct {
	Phase    Phase     `json:"phase"`
	Attempts int       `json:"attempts"`
	NextTry  time.Time `json:"next_try,omitzero"` // Retrying only
	History  []Attempt `json:"history,omitempty"` // oldest first, at most the last MaxHistory
	// Response is the target's answer to the delivery, kept when the target
	// asks for it (capture_response); it lives and expires with the message.
	Response *Response `json:"response,omitempty"`
}

// Response is a captured downstream answer.
type Response struct {
	Status    int      `json:"status"`
	Header    []Header `json:"header,omitempty"`
	Body      []byte   `json:"body,omitempty"`
	Truncated bool     `json:"truncated,omitempty"` // the body was cut at the capture limit
}

// Last returns the most recent attempt, if any.
func (s *State) Last() (Attempt, bool) {
	if len(s.History) == 0 {
		return Attempt{}, false
	}
	return s.History[len(s.History)-1], true
}

// Delivery is a message handed out by Consumer.Fetch for one attempt.
type Delivery struct {
	*Message
	Attempt int    // 1 for the first attempt
	Prior   *State // the recorded state before this attempt; nil on a first attempt
}

// Outcome is what an attempt came to.
type Outcome struct {
	Phase    Phase     // Delivered, Retrying or Dead
	NextTry  time.Time // when Phase is Retrying
	Attempt  Attempt   // this attempt: time, status, error, duration
	Response *Response // optional: the target's answer, kept with the state
}

// TargetStatus is where a message stands for one target.
type TargetStatus struct {
	Target string
	State
}

// QueueStats is a snapshot of a queue's size and progress.
type QueueStats struct {
	Name     string
	Segments int // storage units (files, blocks) the queue holds
	Bytes    int64
	Appended uint64 // seq of the last committed message
	Expired  uint64 // (message, target) pairs expired undelivered since start
	Damaged  uint64 // (message, target) pairs lost to damaged storage since start
	Targets  []TargetStats
}

// TargetStats is one consumer's progress.
type TargetStats struct {
	Target   string
	Floor    uint64 // lowest seq not finished
	Pending  uint64 // messages not yet attempted: the backlog ahead of the cursor
	InFlight int
	Retrying int    // messages waiting in the retry schedule
	Expired  uint64 // messages the retention deleted before the target finished them, since start
}
