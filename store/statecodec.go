package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// The binary form of a State, for engines that store one per message and
// target (buffer writes one for every delivery). Version 2, integers as
// (u)varints, times as Unix nanoseconds (0: the zero time), strings and
// byte strings length-prefixed:
//
//	0x02 | phase string | attempts | next_try | n history {
//	  n | at | status | duration | error string } |
//	response flag (0 or 1) [ status | n headers { name | value } |
//	  body | truncated (0 or 1) ]
//
// Encoding one costs about a tenth of JSON. DecodeState also reads the
// JSON that came before it (a first byte '{'). The caller frames and
// checksums the bytes.
const stateV2 = 0x02

// StateSize is an upper bound of the length of AppendState's output for s.
func StateSize(s *State) int {
	n := 1 + 1 + len(s.Phase) + 3*binary.MaxVarintLen64 + len(s.History)*(4*binary.MaxVarintLen64+8) + 1
	for _, a := range s.History {
		n += len(a.Error) + 2
	}
	if r := s.Response; r != nil {
		n += 3*binary.MaxVarintLen64 + len(r.Body) + 1
		for _, h := range r.Header {
			n += len(h.Name) + len(h.Value) + 2*binary.MaxVarintLen64
		}
	}
	return n
}

// AppendState appends the binary form of s to b.
func AppendState(b []byte, s *State) []byte {
	b = append(b, stateV2)
	b = appendString(b, string(s.Phase))
	b = binary.AppendUvarint(b, uint64(s.Attempts))
	b = binary.AppendVarint(b, unixNanos(s.NextTry))
	b = binary.AppendUvarint(b, uint64(len(s.History)))
	for _, a := range s.History {
		b = binary.AppendUvarint(b, uint64(a.N))
		b = binary.AppendVarint(b, unixNanos(a.At))
		b = binary.AppendUvarint(b, uint64(a.Status))
		b = binary.AppendVarint(b, int64(a.Duration))
		b = appendString(b, a.Error)
	}
	if r := s.Response; r == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(r.Status))
		b = binary.AppendUvarint(b, uint64(len(r.Header)))
		for _, h := range r.Header {
			b = appendString(b, h.Name)
			b = appendString(b, h.Value)
		}
		b = appendBytes(b, r.Body)
		b = append(b, boolByte(r.Truncated))
	}
	return b
}

// DecodeState decodes the output of AppendState, or a State as JSON. The
// result does not alias b. The error wraps ErrCorrupt and says what is
// wrong.
func DecodeState(b []byte) (*State, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty state", ErrCorrupt)
	}
	switch b[0] {
	case '{':
		var s State
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
		}
		return &s, nil
	case stateV2:
	default:
		return nil, fmt.Errorf("%w: unknown state version %#x", ErrCorrupt, b[0])
	}
	d := decoder{b: b[1:]}
	s := &State{Phase: Phase(d.str())}
	s.Attempts = d.int()
	s.NextTry = fromNanos(d.varint())
	if n := d.uvarint(); n > uint64(len(d.b)) { // each attempt takes at least five bytes
		d.fail("attempt count")
	} else if n > 0 {
		s.History = make([]Attempt, n)
		for i := range s.History {
			a := &s.History[i]
			a.N = d.int()
			a.At = fromNanos(d.varint())
			a.Status = d.int()
			a.Duration = time.Duration(d.varint())
			a.Error = d.str()
		}
	}
	if d.byte() == 1 {
		r := &Response{Status: d.int()}
		if n := d.uvarint(); n > uint64(len(d.b)) {
			d.fail("header count")
		} else if n > 0 {
			r.Header = make([]Header, n)
			for i := range r.Header {
				r.Header[i] = Header{Name: d.str(), Value: d.str()}
			}
		}
		if body := d.bytes(); len(body) > 0 {
			r.Body = append([]byte(nil), body...)
		}
		r.Truncated = d.byte() == 1
		s.Response = r
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	return s, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}
