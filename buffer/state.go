package buffer

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// maxHistory bounds the attempts kept per message and target.
const maxHistory = store.MaxHistory

// A state record is crc32c [4] | body. The body is binary, version 2
// (stateV2, below): encoding one costs about a tenth of JSON and it is
// written for every delivery (journal frame, then bbolt at a checkpoint).
// Records written before it are JSON (their body starts with '{'), and
// are read as such: a data directory needs no migration.
//
// Version 2, integers as (u)varints, times as Unix nanoseconds (0: the
// zero time), strings and byte strings length-prefixed:
//
//	0x02 | phase string | attempts | next_try | n history {
//	  n | at | status | duration | error string } |
//	response flag (0 or 1) [ status | n headers { name | value } |
//	  body | truncated (0 or 1) ]
const stateV2 = 0x02

func encodeState(s *State) []byte {
	return appendState(make([]byte, 0, stateSize(s)), s)
}

// stateSize is an upper bound of the record of s.
func stateSize(s *State) int {
	n := 4 + 1 + 1 + len(s.Phase) + 3*binary.MaxVarintLen64 + len(s.History)*(4*binary.MaxVarintLen64+8) + 1
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

// appendState appends the record of s to b.
func appendState(b []byte, s *State) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, stateV2)
	b = appendStr(b, string(s.Phase))
	b = binary.AppendUvarint(b, uint64(s.Attempts))
	b = binary.AppendVarint(b, unixNanos(s.NextTry))
	b = binary.AppendUvarint(b, uint64(len(s.History)))
	for _, a := range s.History {
		b = binary.AppendUvarint(b, uint64(a.N))
		b = binary.AppendVarint(b, unixNanos(a.At))
		b = binary.AppendUvarint(b, uint64(a.Status))
		b = binary.AppendVarint(b, int64(a.Duration))
		b = appendStr(b, a.Error)
	}
	if r := s.Response; r == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(r.Status))
		b = binary.AppendUvarint(b, uint64(len(r.Header)))
		for _, h := range r.Header {
			b = appendStr(b, h.Name)
			b = appendStr(b, h.Value)
		}
		b = binary.AppendUvarint(b, uint64(len(r.Body)))
		b = append(b, r.Body...)
		b = append(b, boolByte(r.Truncated))
	}
	binary.BigEndian.PutUint32(b[start:], crc32.Checksum(b[start+4:], castagnoli))
	return b
}

func decodeState(b []byte) (*State, error) {
	if len(b) < 5 {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrCorrupt, len(b))
	}
	if crc32.Checksum(b[4:], castagnoli) != binary.BigEndian.Uint32(b) {
		return nil, fmt.Errorf("%w: state checksum mismatch", ErrCorrupt)
	}
	switch b[4] {
	case '{':
		var s State
		if err := json.Unmarshal(b[4:], &s); err != nil {
			return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
		}
		return &s, nil
	case stateV2:
	default:
		return nil, fmt.Errorf("%w: unknown state record version %#x", ErrCorrupt, b[4])
	}
	d := stateReader{b: b[5:]}
	s := &State{Phase: store.Phase(d.str())}
	s.Attempts = d.int()
	s.NextTry = fromNanos(d.varint())
	if n := d.uvarint(); n > 0 {
		if n > uint64(len(d.b)) { // each attempt takes at least five bytes
			return nil, fmt.Errorf("%w: state: %d attempts in %d bytes", ErrCorrupt, n, len(d.b))
		}
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
		if n := d.uvarint(); n > 0 {
			if n > uint64(len(d.b)) {
				return nil, fmt.Errorf("%w: state: %d response headers in %d bytes", ErrCorrupt, n, len(d.b))
			}
			r.Header = make([]store.Header, n)
			for i := range r.Header {
				r.Header[i] = store.Header{Name: d.str(), Value: d.str()}
			}
		}
		if body := d.bytes(); len(body) > 0 {
			r.Body = append([]byte(nil), body...)
		}
		r.Truncated = d.byte() == 1
		s.Response = r
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, d.err)
	}
	return s, nil
}

func appendStr(b []byte, s string) []byte {
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

// stateReader reads a version 2 state body; the first failure sticks.
type stateReader struct {
	b   []byte
	err error
}

func (d *stateReader) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("bad %s", what)
	}
	d.b = nil
}

func (d *stateReader) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *stateReader) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *stateReader) int() int {
	v := d.uvarint()
	if v > 1<<31 {
		d.fail("number")
		return 0
	}
	return int(v)
}

func (d *stateReader) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("length")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *stateReader) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *stateReader) str() string { return string(d.bytes()) }
