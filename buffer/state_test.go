package buffer

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

func TestStateRoundTrip(t *testing.T) {
	st := &State{Phase: Retrying, Attempts: 2, NextTry: time.Unix(1700000000, 0).UTC(),
		History: []Attempt{{N: 1, At: time.Unix(1, 0).UTC(), Status: 503, Error: "status 503", Duration: time.Millisecond}}}
	b := encodeState(st)
	got, err := decodeState(b)
	if err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("got %+v, %v", got, err)
	}
	b[len(b)-2] ^= 1
	if _, err := decodeState(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged state: err = %v", err)
	}
}

// TestStateFullRoundTrip: every field of a state survives version 2.
func TestStateFullRoundTrip(t *testing.T) {
	st := &State{Phase: Delivered, Attempts: 3,
		History: []Attempt{
			{N: 1, At: time.Unix(1700000000, 5).UTC(), Error: "connect: refused"},
			{N: 3, At: time.Unix(1700000009, 7).UTC(), Status: 201, Duration: 1500 * time.Microsecond},
		},
		Response: &Response{Status: 201, Header: []store.Header{{Name: "Location", Value: "/o/1"}},
			Body: []byte(`{"ok":true}`), Truncated: true}}
	b := encodeState(st)
	if b[4] != 0x02 {
		t.Fatalf("version byte %#x", b[4])
	}
	got, err := decodeState(b)
	if err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("got %+v (%+v), %v", got, got.Response, err)
	}
}

// TestStateReadsJSON: state records written before version 2 (crc | JSON)
// are read as they were.
func TestStateReadsJSON(t *testing.T) {
	js := []byte(`{"phase":"delivered","attempts":1,"history":[{"n":1,"at":"2025-01-01T00:00:00Z","status":200,"duration_ns":1000}]}`)
	b := binary.BigEndian.AppendUint32(nil, crc32.Checksum(js, castagnoli))
	b = append(b, js...)
	got, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	want := &State{Phase: Delivered, Attempts: 1, History: []Attempt{{N: 1, At: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Status: 200, Duration: time.Microsecond}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// FuzzStateCodec: decodeState never panics, whatever the bytes; what it
// accepts encodes and decodes to the same state. Seeds in
// testdata/fuzz/FuzzStateCodec and below.
func FuzzStateCodec(f *testing.F) {
	f.Add(encodeState(&State{Phase: Delivered, Attempts: 1, History: []Attempt{{N: 1, At: time.Unix(1, 0), Status: 200}}}))
	f.Add(encodeState(&State{Phase: Retrying, Attempts: 2, NextTry: time.Unix(2, 0), Response: &Response{Status: 200, Body: []byte("x")}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 4 { // give mutated bodies a valid checksum, to reach the decoder
			binary.BigEndian.PutUint32(b, crc32.Checksum(b[4:], castagnoli))
		}
		st, err := decodeState(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not match ErrCorrupt", err)
			}
			return
		}
		enc := encodeState(st)
		if len(enc) > stateSize(st) {
			t.Fatalf("record of %d bytes, stateSize said at most %d", len(enc), stateSize(st))
		}
		again, err := decodeState(enc)
		if err != nil || !reflect.DeepEqual(normState(again), normState(st)) {
			t.Fatalf("re-encoded state differs: %+v, %v; was %+v", again, err, st)
		}
	})
}

// normState drops what version 2 does not keep apart from JSON input: an
// empty slice and nil, and times' locations.
func normState(s *State) *State {
	c := *s
	c.NextTry = sameInstant(c.NextTry)
	if len(c.History) == 0 {
		c.History = nil
	}
	c.History = append([]Attempt(nil), c.History...)
	for i := range c.History {
		c.History[i].At = sameInstant(c.History[i].At)
	}
	if r := c.Response; r != nil {
		rc := *r
		if len(rc.Header) == 0 {
			rc.Header = nil
		}
		if len(rc.Body) == 0 {
			rc.Body = nil
		}
		c.Response = &rc
	}
	return &c
}

// sameInstant is t as the binary form gives it back: UTC, zero kept zero.
func sameInstant(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.Unix(0, t.UnixNano()).UTC()
}
