package store

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
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
	f.Add(encodeV1(sampleMessage()))
	f.Add(EncodeRecord(nil, &Message{Method: "POST", URI: "/_bulk", Header: []Header{{"X-Sluice-Es-Op", "create"}, {"X-Sluice-Es-Meta", "{}"}}}))
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

// encodeV1 is the record encoder of version 1 (before 2026-12-05), kept
// to test that its records still read the same; v1Golden checks that it
// is the one that build had.
func encodeV1(m *Message) []byte {
	b := []byte{recordV1}
	b = append(b, m.ID.tag[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.EnqueuedAt.UnixNano()))
	b = appendBytes(b, []byte(m.Method))
	b = appendBytes(b, []byte(m.URI))
	b = binary.AppendUvarint(b, uint64(len(m.Header)))
	for _, h := range m.Header {
		b = appendBytes(b, []byte(h.Name))
		b = appendBytes(b, []byte(h.Value))
	}
	b = appendBytes(b, []byte(m.IdempotencyKey))
	b = appendBytes(b, m.Body)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// v1Golden is EncodeRecord(nil, sampleMessage()) with a zero tag, by the
// build at 3a04a96, the last to write version 1.
const v1Golden = "01000000000000000017979cfe3d85cd1504504f5354152f6170692f6f72646572733f783d3126793d253230020c436f6e74656e742d" +
	"54797065106170706c69636174696f6e2f6a736f6e0d582d437573746f6d65722d496404632d3432056b65792d310b7b226f72646572223a317d79a7be97"

// Records of version 1 decode to the same message as the version 2 record
// of it, and RecordHead and RecordFingerprint read them alike.
func TestRecordReadsVersion1(t *testing.T) {
	m := sampleMessage()
	m.ID = ID{}
	golden, err := hex.DecodeString(v1Golden)
	if err != nil {
		t.Fatal(err)
	}
	if old := encodeV1(m); !bytes.Equal(old, golden) {
		t.Fatalf("the test's version 1 encoder is not the old one:\n%x\n%s", old, v1Golden)
	}
	m = sampleMessage()
	msgs := []*Message{m, {EnqueuedAt: time.Unix(0, 0), Method: "GET", URI: "/"},
		{Method: "POST", URI: "/_bulk", Header: []Header{{"Content-Type", "application/json"}, {"X-Sluice-Protocol", "elasticsearch"},
			{"X-Sluice-Es-Op", "create"}, {"X-Sluice-Es-Meta", `{"_index":"logs"}`}, {"X-Sluice-Es-Id", `"a"`}}, Body: []byte(`{"a":1}`)},
		{Method: "POST", URI: "/f", Header: []Header{{ForwardedHeader, string(ForwardedValue(201, Fingerprint([]byte("POST"), []byte("/f"), []byte("b"))))}}, IdempotencyKey: "k"}}
	for _, m := range msgs {
		v1, v2 := encodeV1(m), EncodeRecord(nil, m)
		a, err := DecodeRecord(v1)
		if err != nil {
			t.Fatal(err)
		}
		b, err := DecodeRecord(v2)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("version 1 reads\n%+v\nversion 2\n%+v", a, b)
		}
		at1, tag1, key1 := RecordHead(v1)
		at2, tag2, key2 := RecordHead(v2)
		if !at1.Equal(at2) || tag1 != tag2 || !bytes.Equal(key1, key2) || string(key1) != m.IdempotencyKey {
			t.Fatalf("RecordHead: %v %x %q against %v %x %q", at1, tag1, key1, at2, tag2, key2)
		}
		fp1, ok1 := RecordFingerprint(v1)
		fp2, ok2 := RecordFingerprint(v2)
		if !ok1 || !ok2 || fp1 != fp2 {
			t.Fatalf("RecordFingerprint: %x %v against %x %v", fp1, ok1, fp2, ok2)
		}
		if _, fwd := m.Forwarded(); !fwd && fp1 != Fingerprint([]byte(m.Method), []byte(m.URI), m.Body) {
			t.Fatal("RecordFingerprint is not the request's")
		}
	}
}

// frozenSymbols is the table of version 2 records as released: records on
// disk name its entries by position, so they may only be added to.
var frozenSymbols = []string{
	"POST", "PUT", "GET", "HEAD", "DELETE", "PATCH",
	"Content-Type", "X-Sluice-Protocol", "X-Sluice-Es-Op", "X-Sluice-Es-Meta", "X-Sluice-Es-Id",
	"Content-Encoding", "User-Agent", "Accept", "Accept-Encoding",
	"application/json", "application/x-protobuf", "application/x-ndjson", "text/plain",
	"elasticsearch", "splunk-hec", "loki", "otlp", "ndjson", "http",
	"index", "create",
	"gzip", "deflate", "snappy", "identity", "*/*",
}

func TestRecordSymbolsOnlyGrow(t *testing.T) {
	if len(symbols) < len(frozenSymbols) || len(symbols) > 64 {
		t.Fatalf("%d symbols; want %d or more, at most 64", len(symbols), len(frozenSymbols))
	}
	for i, s := range frozenSymbols {
		if symbols[i] != s {
			t.Fatalf("symbol %d is %q, was %q: records on disk name it by position", i, symbols[i], s)
		}
	}
	seen := map[string]bool{}
	for _, s := range symbols {
		if seen[s] {
			t.Fatalf("symbol %q twice", s)
		}
		seen[s] = true
	}
}

// A log document's record costs its headers a byte each for names and
// values of the table, where version 1 spelled them out; a string of the
// table still reads back when it is written out (as version 1 did, or as a
// literal of version 2).
func TestRecordSymbolsShrinkLogDocuments(t *testing.T) {
	m := &Message{Method: "POST", URI: "/_bulk", Header: []Header{{"Content-Type", "application/json"}, {"X-Sluice-Protocol", "elasticsearch"},
		{"X-Sluice-Es-Op", "create"}, {"X-Sluice-Es-Meta", `{"_index":"logs"}`}}, Body: bytes.Repeat([]byte("x"), 200)}
	v1, v2 := encodeV1(m), EncodeRecord(nil, m)
	// The method and the 4 headers but the metadata's value: 106 bytes
	// of names, values and their lengths in version 1, 8 in version 2.
	if saved := len(v1) - len(v2); saved != 106-8 {
		t.Fatalf("version 2 is %d bytes, version 1 %d: saved %d, want 98", len(v2), len(v1), saved)
	}
	// Written out as a literal of version 2, a symbol reads the same.
	lit := []byte{recordVersion}
	lit = append(lit, make([]byte, 16)...)
	lit = binary.AppendUvarint(lit, 4<<1)
	lit = append(lit, "POST"...)
	lit = appendBytes(lit, []byte("/"))
	lit = append(lit, 1, 12<<1)
	lit = append(lit, "Content-Type"...)
	lit = append(lit, 15<<1|1, 0, 0)
	lit = binary.BigEndian.AppendUint32(lit, crc32.Checksum(lit, castagnoli))
	got, err := DecodeRecord(lit)
	if err != nil {
		t.Fatal(err)
	}
	if got.Method != "POST" || len(got.Header) != 1 || got.Header[0] != (Header{"Content-Type", "application/json"}) {
		t.Fatalf("%+v", got)
	}
	// A symbol past the table is damage.
	bad := append([]byte(nil), lit[:len(lit)-4]...)
	bad[len(bad)-3] = 63<<1 | 1
	bad = binary.BigEndian.AppendUint32(bad, crc32.Checksum(bad, castagnoli))
	if _, err := DecodeRecord(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("symbol 63: %v, want ErrCorrupt", err)
	}
}

// FuzzRecordV1: whatever version 1 record the old encoder made reads as
// the same message as its version 2 record.
func FuzzRecordV1(f *testing.F) {
	f.Add("POST", "/_bulk", "X-Sluice-Es-Op", "create", "k", []byte("{}"), int64(1))
	f.Add("GET", "/", "Content-Type", "", "", []byte(nil), int64(0))
	f.Fuzz(func(t *testing.T, method, uri, hn, hv, key string, body []byte, ns int64) {
		m := &Message{EnqueuedAt: time.Unix(0, ns), Method: method, URI: uri, Header: []Header{{hn, hv}, {"Content-Type", hv}}, IdempotencyKey: key, Body: body}
		a, err := DecodeRecord(encodeV1(m))
		if err != nil {
			t.Fatal(err)
		}
		b, err := DecodeRecord(EncodeRecord(nil, m))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) || a.Method != method || a.Header[0].Name != hn || a.Header[1].Value != hv {
			t.Fatalf("version 1 reads\n%+v\nversion 2\n%+v", a, b)
		}
	})
}

// A draft sharing header fields encodes to the same record, byte for
// byte, as one that added them itself, and Message shows them first.
func TestDraftSharedHeaders(t *testing.T) {
	var sh SharedHeaders
	sh.Add([]byte("Content-Type"), []byte("application/json"))
	sh.Add([]byte("X-Custom"), []byte("not a symbol"))
	tag := [8]byte{9, 8, 7}
	for _, own := range [][][2]string{nil, {{"X-Sluice-Es-Meta", `{"_index":"a"}`}}, {{"X-Sluice-Es-Op", "index"}, {"X-Sluice-Es-Id", `"7"`}}} {
		var a, b Draft
		for _, d := range []*Draft{&a, &b} {
			d.EnqueuedAt, d.Method, d.URI, d.Body, d.IdempotencyKey = time.Unix(5, 6), []byte("POST"), []byte("/_bulk"), []byte(`{"x":1}`), []byte("k")
		}
		a.Share(&sh)
		b.AddHeader([]byte("Content-Type"), []byte("application/json"))
		b.AddHeader([]byte("X-Custom"), []byte("not a symbol"))
		for _, h := range own {
			a.AddHeader([]byte(h[0]), []byte(h[1]))
			b.AddHeader([]byte(h[0]), []byte(h[1]))
		}
		ra, rb := a.Encode(tag), b.Encode(tag)
		if !bytes.Equal(ra, rb) {
			t.Fatalf("shared:\n%x\nadded:\n%x", ra, rb)
		}
		if !reflect.DeepEqual(a.Message(), b.Message()) {
			t.Fatalf("Message: %+v against %+v", a.Message(), b.Message())
		}
		m, err := DecodeRecord(ra)
		if err != nil || len(m.Header) != 2+len(own) || m.Header[1] != (Header{"X-Custom", "not a symbol"}) {
			t.Fatalf("%+v %v", m, err)
		}
		a.Reset()
		if a.Encode(tag); a.shared != nil || len(a.Message().Header) != 0 {
			t.Fatal("Reset kept the shared headers")
		}
	}
}
