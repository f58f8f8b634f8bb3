package buffer

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"time"
)

// Phase is where a message stands for one target.
type Phase string

// The phases a message goes through for each target.
const (
	Queued    Phase = "queued"    // not yet attempted
	InFlight  Phase = "in_flight" // fetched by the drainer, outcome not yet recorded
	Retrying  Phase = "retrying"  // failed, scheduled again at NextTry
	Delivered Phase = "delivered" // the target answered with success
	Dead      Phase = "dead"      // failed for good; kept as a dead letter
	Parked    Phase = "parked"    // waits behind an earlier message with the same key (Consumer.Park)
)

// maxHistory bounds the attempts kept per message and target.
const maxHistory = 32

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
	History  []Attempt `json:"history,omitempty"` // oldest first, at most the last 32
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

// encodeState is crc32c [4] | JSON. JSON keeps the rare state records readable
// by hand (sluice inspect) at a cost that does not matter next to an HTTP call.
func encodeState(s *State) []byte {
	js, err := json.Marshal(s)
	if err != nil {
		panic("buffer: marshal state: " + err.Error()) // plain data; cannot fail
	}
	b := make([]byte, 4, 4+len(js))
	b = append(b, js...)
	binary.BigEndian.PutUint32(b, crc32.Checksum(js, castagnoli))
	return b
}

func decodeState(b []byte) (*State, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrCorrupt, len(b))
	}
	if crc32.Checksum(b[4:], castagnoli) != binary.BigEndian.Uint32(b) {
		return nil, fmt.Errorf("%w: state checksum mismatch", ErrCorrupt)
	}
	var s State
	if err := json.Unmarshal(b[4:], &s); err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
	}
	return &s, nil
}
