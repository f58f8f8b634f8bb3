package store

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func sampleMessage() *Message {
	return &Message{
		ID:             ID{tag: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}},
		EnqueuedAt:     time.Unix(1700000000, 123456789),
		Method:         "POST",
		URI:            "/api/orders?x=1&y=%20",
		Header:         []Header{{Name: "Content-Type", Value: "application/json"}, {Name: "X-Customer-Id", Value: "c-42"}},
		IdempotencyKey: "key-1",
		Body:           []byte(`{"order":1}`),
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, m := range []*Message{sampleMessage(), {EnqueuedAt: time.Unix(0, 0), Method: "PUT", URI: "/"}} {
		b := EncodeRecord(nil, m)
		got, err := DecodeRecord(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Body == nil {
			got.Body = m.Body
		}
		if !got.EnqueuedAt.Equal(m.EnqueuedAt) {
			t.Fatalf("EnqueuedAt %v, want %v", got.EnqueuedAt, m.EnqueuedAt)
		}
		got.EnqueuedAt = m.EnqueuedAt
		if len(got.Body) == 0 && len(m.Body) == 0 {
			got.Body = m.Body
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
	}
}

func TestRecordDetectsDamage(t *testing.T) {
	b := EncodeRecord(nil, sampleMessage())
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(b)
			c[i] ^= bit
			if _, err := DecodeRecord(c); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip bit %#x of byte %d: err = %v, want ErrCorrupt", bit, i, err)
			}
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := DecodeRecord(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d bytes: err = %v, want ErrCorrupt", n, err)
		}
	}
}

func TestIDRoundTrip(t *testing.T) {
	id := ID{seq: 1234567, tag: NewTag()}
	s := id.String()
	if len(s) != idLen {
		t.Fatalf("len(%q) = %d", s, len(s))
	}
	got, err := ParseID(s)
	if err != nil || got != id {
		t.Fatalf("ParseID(%q) = %v, %v; want %v", s, got, err, id)
	}
	for _, bad := range []string{"", "short", s + "x", s[:25] + "!", "uuuuuuuuuuuuuuuuuuuuuuuuuu"} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) succeeded", bad)
		}
	}
}

// FuzzDecodeRecord: decoding arbitrary bytes never panics, and whatever
// decodes survives a re-encode unchanged.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(EncodeRecord(nil, sampleMessage()))
	f.Add(EncodeRecord(nil, &Message{Method: "GET", URI: "/"}))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		again, err := DecodeRecord(EncodeRecord(nil, m))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encode differs:\n%+v\n%+v", again, m)
		}
	})
}

// FuzzRecordRoundTrip: every message survives encode/decode.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add("POST", "/api/orders", "Content-Type", "application/json", "k", []byte("{}"), int64(1))
	f.Fuzz(func(t *testing.T, method, uri, hn, hv, key string, body []byte, ns int64) {
		m := &Message{EnqueuedAt: time.Unix(0, ns), Method: method, URI: uri, Header: []Header{{hn, hv}}, IdempotencyKey: key, Body: body}
		got, err := DecodeRecord(EncodeRecord(nil, m))
		if err != nil {
			t.Fatal(err)
		}
		if got.Method != method || got.URI != uri || got.IdempotencyKey != key || !bytes.Equal(got.Body, body) ||
			got.Header[0] != m.Header[0] || got.EnqueuedAt.UnixNano() != ns {
			t.Fatalf("round trip mismatch: %+v", got)
		}
	})
}

// TestDecodeRecordShared: the shared decoder gives the same message, with
// a body that aliases the record instead of a copy.
func TestDecodeRecordShared(t *testing.T) {
	m := sampleMessage()
	rec := EncodeRecord(nil, m)
	want, err := DecodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecordShared(rec)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("shared decode: %+v, %v; want %+v", got, err, want)
	}
	if len(got.Body) == 0 || &got.Body[0] != &rec[bytes.Index(rec, m.Body)] {
		t.Fatal("the body is a copy, not a view of the record")
	}
	if &want.Body[0] == &got.Body[0] {
		t.Fatal("DecodeRecord's body aliases the record")
	}
}
