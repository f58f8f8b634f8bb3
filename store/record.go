package store

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"
)

// MaxRecordBytes bounds one encoded message (the proxy's max_body is lower).
const MaxRecordBytes = 512 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is one request header field, kept in arrival order.
type Header struct {
	Name, Value string
}

// Message is one accepted request, as stored and as replayed.
type Message struct {
	Seq            uint64 // position in its queue; set by Append, not encoded
	ID             ID     // set by Append from Seq and a random tag
	EnqueuedAt     time.Time
	Method         string
	URI            string   // path and query exactly as received
	Header         []Header // end-to-end headers only; the proxy strips hop-by-hop ones
	IdempotencyKey string   // the client's key, if the route names a header; else empty
	Body           []byte
}

// Record layout, version 2 (all integers big endian, lengths uvarint),
// written by EncodeRecord and Draft.Encode:
//
//	version byte (2) | tag [8] | enqueuedAt int64 ns |
//	sym method | len uri | n headers { sym name | sym value } |
//	len idempotency key | len body | crc32c of everything before it [4]
//
// A sym is one uvarint v: an even v is followed by v/2 bytes, the string
// itself; an odd v names symbols[v/2], a string of the fixed table below.
// The table holds the header names and values that log routes store with
// every document (with the method, 106 bytes of a 361-byte Elasticsearch
// document's record in version 1, 8 in version 2; see
// TestRecordSymbolsShrinkLogDocuments) and common methods and content
// types; any other string is written as it is, at one byte more than
// version 1 for strings of 64 bytes or more.
//
// Version 1, which versions before 2026-12-05 wrote, is version 2 with
// every sym a plain length-prefixed string (len s | s); it is read as it
// always was, so a data directory needs no migration. A version that knows
// only version 1 refuses version 2 records as damaged: going back to such
// a version needs the queues drained first.
const (
	recordV1      = 1
	recordVersion = 2
)

// symbols is the table of version 2 records. Entries are only ever added
// at the end (a record names them by position), never changed or removed,
// and there are at most 64 of them, so that each is named by one byte.
var symbols = [...]string{
	// methods
	"POST", "PUT", "GET", "HEAD", "DELETE", "PATCH",
	// header names: what log routes store with every document
	// (logproto.HeaderProtocol, HeaderOp, HeaderMeta, HeaderID), then
	// common request headers
	"Content-Type", "X-Sluice-Protocol", "X-Sluice-Es-Op", "X-Sluice-Es-Meta", "X-Sluice-Es-Id",
	"Content-Encoding", "User-Agent", "Accept", "Accept-Encoding",
	// header values: content types, log route protocols, Elasticsearch
	// operations, content encodings
	"application/json", "application/x-protobuf", "application/x-ndjson", "text/plain",
	"elasticsearch", "splunk-hec", "loki", "otlp", "ndjson", "http",
	"index", "create",
	"gzip", "deflate", "snappy", "identity", "*/*",
}

// maxSymLen is the length of the longest symbol; symsByLen[n] lists the
// symbols of length n, so that looking a string up costs a length check
// and a comparison or two.
const maxSymLen = 24

var (
	symBytes  [len(symbols)][]byte
	symsByLen [maxSymLen + 1][]uint8
)

func init() {
	if len(symbols) > 64 {
		panic("store: more than 64 record symbols")
	}
	for i, s := range symbols {
		if len(s) > maxSymLen {
			panic("store: record symbol longer than maxSymLen: " + s)
		}
		symBytes[i] = []byte(s)
		symsByLen[len(s)] = append(symsByLen[len(s)], uint8(i))
	}
}

// symbol returns the table position of b, or -1.
func symbol(b []byte) int {
	if len(b) > maxSymLen {
		return -1
	}
	for _, i := range symsByLen[len(b)] {
		if string(symBytes[i]) == string(b) {
			return int(i)
		}
	}
	return -1
}

// RecordSymbol reports whether s is in the table of version 2 records,
// where it takes one byte; for a test that keeps what log routes store
// with every document in it.
func RecordSymbol(s string) bool { return symbol([]byte(s)) >= 0 }

func appendSym(dst, b []byte) []byte {
	if i := symbol(b); i >= 0 {
		return binary.AppendUvarint(dst, uint64(i)<<1|1)
	}
	dst = binary.AppendUvarint(dst, uint64(len(b))<<1)
	return append(dst, b...)
}

// EncodeRecord appends the record of m (with the id tag) to dst.
func EncodeRecord(dst []byte, m *Message) []byte {
	hdrs := make([][2][]byte, len(m.Header))
	for i, h := range m.Header {
		hdrs[i] = [2][]byte{[]byte(h.Name), []byte(h.Value)}
	}
	return appendRecord(dst, m.ID.tag, m.EnqueuedAt, []byte(m.Method), []byte(m.URI), nil, hdrs, []byte(m.IdempotencyKey), m.Body)
}

func appendRecord(dst []byte, tag [8]byte, at time.Time, method, uri []byte, shared *SharedHeaders, hdrs [][2][]byte, key, body []byte) []byte {
	start := len(dst)
	dst = append(dst, recordVersion)
	dst = append(dst, tag[:]...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(at.UnixNano()))
	dst = appendSym(dst, method)
	dst = appendBytes(dst, uri)
	n := len(hdrs)
	if shared != nil {
		n += len(shared.fields)
		dst = binary.AppendUvarint(dst, uint64(n))
		dst = append(dst, shared.enc...)
	} else {
		dst = binary.AppendUvarint(dst, uint64(n))
	}
	for _, h := range hdrs {
		dst = appendSym(dst, h[0])
		dst = appendSym(dst, h[1])
	}
	dst = appendBytes(dst, key)
	dst = appendBytes(dst, body)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// Draft is a message built from byte slices, for a caller that holds the
// request as bytes (the proxy) and wants no intermediate strings. Reuse one
// Draft per request with Reset; the slices must stay valid until Append
// returns.
type Draft struct {
	EnqueuedAt                        time.Time
	Method, URI, IdempotencyKey, Body []byte
	shared                            *SharedHeaders
	headers                           [][2][]byte
	buf                               []byte

	// Duplicate is set by Queue.AppendDraft when IdempotencyKey was seen on
	// this queue before (within the retention): the returned ID is the first
	// message's and nothing new was stored.
	Duplicate bool
}

// AddHeader adds one header field, in order (after the shared ones).
func (d *Draft) AddHeader(name, value []byte) { d.headers = append(d.headers, [2][]byte{name, value}) }

// SharedHeaders are header fields that many drafts carry alike (the
// documents of one request), encoded once: a draft that shares them
// (Draft.Share) stores them ahead of its own fields, as if it had added
// them itself, with no lookup or copy per draft. Build one with Add, share
// it with any number of drafts, and keep it (and its slices) unchanged
// until they are encoded.
type SharedHeaders struct {
	fields [][2][]byte
	enc    []byte
}

// Add adds one header field, in order.
func (s *SharedHeaders) Add(name, value []byte) {
	s.fields = append(s.fields, [2][]byte{name, value})
	s.enc = appendSym(appendSym(s.enc, name), value)
}

// Reset clears s for reuse, keeping its buffers.
func (s *SharedHeaders) Reset() {
	clear(s.fields)
	s.fields, s.enc = s.fields[:0], s.enc[:0]
}

// Share makes s the draft's first header fields (nil: none).
func (d *Draft) Share(s *SharedHeaders) { d.shared = s }

// Message returns d as a Message (copying), for tests and inspection.
func (d *Draft) Message() *Message {
	m := &Message{EnqueuedAt: d.EnqueuedAt, Method: string(d.Method), URI: string(d.URI),
		IdempotencyKey: string(d.IdempotencyKey), Body: append([]byte(nil), d.Body...)}
	var shared [][2][]byte
	if d.shared != nil {
		shared = d.shared.fields
	}
	for _, h := range append(shared[:len(shared):len(shared)], d.headers...) {
		m.Header = append(m.Header, Header{Name: string(h[0]), Value: string(h[1])})
	}
	return m
}

// Encode encodes d as a record with the id tag tag into d's own buffer and
// returns it (valid until the next Encode or Reset).
func (d *Draft) Encode(tag [8]byte) []byte {
	d.buf = appendRecord(d.buf[:0], tag, d.EnqueuedAt, d.Method, d.URI, d.shared, d.headers, d.IdempotencyKey, d.Body)
	return d.buf
}

// Reset clears d for reuse, keeping its buffers.
func (d *Draft) Reset() {
	clear(d.headers)
	*d = Draft{headers: d.headers[:0], buf: d.buf[:0]}
}

// DecodeRecord decodes a record into a new Message whose fields do not alias
// b (b may be bbolt's mmap, valid only inside its transaction). The error
// wraps ErrCorrupt and says what is wrong.
func DecodeRecord(b []byte) (*Message, error) { return decodeRecord(b, true) }

// DecodeRecordShared is DecodeRecord for a b that is the caller's own and
// never written again (a buffer read for this purpose): the Body aliases
// b instead of being copied, which keeps all of b alive as long as the
// message is.
func DecodeRecordShared(b []byte) (*Message, error) { return decodeRecord(b, false) }

func decodeRecord(b []byte, copyBody bool) (*Message, error) {
	if len(b) < 1+8+8+4 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrCorrupt, len(b))
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, fmt.Errorf("%w: checksum %08x, want %08x", ErrCorrupt, got, sum)
	}
	if body[0] != recordVersion && body[0] != recordV1 {
		return nil, fmt.Errorf("%w: unknown record version %d", ErrCorrupt, body[0])
	}
	d := decoder{b: body[1:], v: body[0]}
	m := &Message{}
	copy(m.ID.tag[:], d.next(8))
	m.EnqueuedAt = time.Unix(0, int64(binary.BigEndian.Uint64(d.next(8))))
	m.Method = d.symStr()
	m.URI = d.str()
	n := d.uvarint()
	if n > uint64(len(d.b)) { // each header takes at least two bytes
		d.fail("header count")
	}
	if d.err == nil && n > 0 {
		m.Header = make([]Header, 0, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			name := d.symStr()
			m.Header = append(m.Header, Header{Name: name, Value: d.symStr()})
		}
	}
	m.IdempotencyKey = d.str()
	if body := d.bytes(); copyBody {
		m.Body = append([]byte(nil), body...)
	} else if len(body) > 0 {
		m.Body = body[:len(body):len(body)]
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

// decoder reads length-prefixed fields; the first failure sticks.
type decoder struct {
	b   []byte
	err error
	v   byte // the record's version, for syms: 1 reads them as plain strings
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) next(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail("length")
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
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

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }

// sym reads a sym (see the record layout): a string of the record, or one
// of the table (aliasing it: never to be written).
func (d *decoder) sym() []byte {
	if d.v == recordV1 {
		return d.bytes()
	}
	v := d.uvarint()
	if d.err != nil {
		return nil
	}
	if v&1 == 1 {
		if v>>1 >= uint64(len(symbols)) {
			d.fail("symbol")
			return nil
		}
		return symBytes[v>>1]
	}
	if v>>1 > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	b := d.b[:v>>1]
	d.b = d.b[v>>1:]
	return b
}

// symStr is sym as a string; a symbol of the table costs no allocation.
func (d *decoder) symStr() string {
	if d.v != recordV1 && d.err == nil && len(d.b) > 0 && d.b[0]&1 == 1 {
		if v, n := binary.Uvarint(d.b); n > 0 && v>>1 < uint64(len(symbols)) {
			d.b = d.b[n:]
			return symbols[v>>1]
		}
	}
	return string(d.sym())
}

// headDecoder returns a decoder at the method of a record whose checksum
// holds, or ok false for a record too short or of a version it does not
// know.
func headDecoder(rec []byte) (d decoder, ok bool) {
	if len(rec) < 1+8+8+4 || (rec[0] != recordVersion && rec[0] != recordV1) {
		return d, false
	}
	return decoder{b: rec[17 : len(rec)-4], v: rec[0]}, true
}

// RecordSound reports whether rec's checksum holds.
func RecordSound(rec []byte) bool {
	return len(rec) >= 4 && crc32.Checksum(rec[:len(rec)-4], castagnoli) == binary.BigEndian.Uint32(rec[len(rec)-4:])
}

// RecordHead returns a sound record's enqueue time, id tag and idempotency
// key (aliasing rec) without decoding the rest.
func RecordHead(rec []byte) (time.Time, [8]byte, []byte) {
	var tag [8]byte
	d, ok := headDecoder(rec)
	if !ok {
		return time.Time{}, tag, nil
	}
	copy(tag[:], rec[1:9])
	at := time.Unix(0, int64(binary.BigEndian.Uint64(rec[9:17])))
	d.sym()   // method
	d.bytes() // uri
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		d.sym()
		d.sym()
	}
	key := d.bytes()
	if d.err != nil {
		return at, tag, nil
	}
	return at, tag, key
}

// Fingerprint is what a repeated idempotency key is checked against: the
// first 16 bytes of SHA-256 over the method, the URI and the body, each
// length-prefixed (headers are not part of it: proxies and clients add and
// reorder them between retries). Two requests with one key and different
// fingerprints are different requests (ErrKeyMismatch). The zero value
// means "unknown" (a key indexed by an engine version that kept none) and
// matches every request.
func Fingerprint(method, uri, body []byte) (fp [16]byte) {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, b := range [][]byte{method, uri, body} {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
		h.Write(b)
	}
	var sum [sha256.Size]byte
	copy(fp[:], h.Sum(sum[:0]))
	return fp
}

// Fingerprint returns the Fingerprint of the request d holds.
func (d *Draft) Fingerprint() [16]byte { return Fingerprint(d.Method, d.URI, d.Body) }

// RecordFingerprint returns the Fingerprint of a sound record's message
// without decoding it into a Message; ok is false if it does not parse.
func RecordFingerprint(rec []byte) (fp [16]byte, ok bool) {
	d, ok := headDecoder(rec)
	if !ok {
		return fp, false
	}
	method := d.sym()
	uri := d.bytes()
	var fwd []byte // a forwarded request's record holds its fingerprint (forwarded.go)
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		if name, v := d.sym(), d.sym(); string(name) == ForwardedHeader {
			fwd = v
		}
	}
	d.bytes() // key
	body := d.bytes()
	if d.err != nil {
		return fp, false
	}
	if fwd != nil {
		_, fp, _ = parseForwarded(fwd)
		return fp, true
	}
	return Fingerprint(method, uri, body), true
}

// KeyHash is the 16-byte hash (SHA-256, truncated) under which an
// idempotency key is indexed and messages are parked.
func KeyHash(key []byte) (h [16]byte) {
	sum := sha256.Sum256(key)
	copy(h[:], sum[:16])
	return h
}

func (d *decoder) varint() int64 {
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

func (d *decoder) int() int {
	v := d.uvarint()
	if v > 1<<31 {
		d.fail("number")
		return 0
	}
	return int(v)
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("length")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}
