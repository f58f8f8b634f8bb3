// Package h1 reads the plainest HTTP/1.1 heads: the strict subset that
// sluice's event loops (the proxy's relay, the drainers' client) handle
// themselves, without an HTTP library's reader.
//
// What it accepts: a head whose every line ends in CRLF, whose first line
// has no control character and whose every field is a token, a colon and
// visible characters, blanks or obs-text; at most MaxFields fields. What it
// does not accept is not an error here: it is Other, and the caller gives
// the bytes to a full HTTP implementation (fasthttp), with its hardening.
// So the parser needs to be right only about what it accepts; the callers'
// fuzz tests hold it to fasthttp's reading of the same bytes.
//
// Cost: one pass over the head, no allocation; the results are slices of
// the bytes parsed and are valid as long as those bytes are.
package h1

import (
	"bytes"
	"strings"

	"github.com/sluice-proxy/sluice/internal/hop"
)

// MaxFields is the most header fields a head may have.
const MaxFields = 64

// Field is one header field of a head, its value without surrounding blanks.
type Field struct{ K, V []byte }

// Head is a parsed request or status line and its header fields.
type Head struct {
	First  []byte
	Fields [MaxFields]Field
	N      int
	Size   int // bytes of the head, blank line included
}

// Results of Head.Parse and of the callers' checks built on it.
const (
	More  = iota // the head (or body) has not all arrived
	OK           // parsed
	Other        // not in the subset: a full HTTP implementation takes it
)

// Parse parses the head at the start of b.
func (h *Head) Parse(b []byte) int {
	h.N, h.Size, h.First = 0, 0, nil
	pos := 0
	for {
		i := bytes.IndexByte(b[pos:], '\n')
		if i < 0 {
			return More
		}
		if i == 0 || b[pos+i-1] != '\r' {
			return Other // a bare LF
		}
		line := b[pos : pos+i-1]
		pos += i + 1
		if h.First == nil {
			if len(line) == 0 {
				return Other
			}
			for _, c := range line {
				if byteClass[c]&classVisible == 0 {
					return Other
				}
			}
			h.First = line
			continue
		}
		if len(line) == 0 {
			h.Size = pos
			return OK
		}
		if h.N == MaxFields {
			return Other
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return Other
		}
		for _, c := range line[:colon] {
			if byteClass[c]&classToken == 0 {
				return Other
			}
		}
		v := line[colon+1:]
		for _, c := range v {
			if byteClass[c]&classValue == 0 {
				return Other
			}
		}
		for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
			v = v[1:]
		}
		for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
			v = v[:len(v)-1]
		}
		h.Fields[h.N] = Field{K: line[:colon], V: v}
		h.N++
	}
}

// IsTokenChar reports whether c may be part of a token (a method, a field
// name).
func IsTokenChar(c byte) bool { return byteClass[c]&classToken != 0 }

// IsVisible reports whether c may be part of a request or status line.
func IsVisible(c byte) bool { return byteClass[c]&classVisible != 0 }

// byteClass says what each byte may be in a head: part of a token (a
// method, a field name), of a field value (visible, blank or obs-text), of
// the request or status line (no control character).
var byteClass = func() (t [256]uint8) {
	for c := range 256 {
		b := byte(c)
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0:
			t[c] |= classToken
		}
		if (b >= ' ' || b == '\t') && b != 0x7f {
			t[c] |= classValue
		}
		if b >= ' ' && b != 0x7f {
			t[c] |= classVisible
		}
	}
	return t
}()

const (
	classToken = 1 << iota
	classValue
	classVisible
)

// NameIs reports whether the field name k is name, ignoring case.
func NameIs(k []byte, name string) bool {
	return len(k) == len(name) && bytes.EqualFold(k, []byte(name))
}

// MaxConnTokens is the most names a Connection field may list (ConnInfo).
const MaxConnTokens = 8

// ConnInfo is what the Connection fields of a head say.
type ConnInfo struct {
	Close bool
	names [MaxConnTokens][]byte
	n     int
	Over  bool // more than MaxConnTokens names
}

// Add reads one Connection field's value.
func (ci *ConnInfo) Add(v []byte) {
	hop.Tokens(v, func(t []byte) {
		switch {
		case bytes.EqualFold(t, []byte("close")):
			ci.Close = true
		case bytes.EqualFold(t, []byte("keep-alive")):
		case ci.n == MaxConnTokens:
			ci.Over = true
		default:
			ci.names[ci.n] = t
			ci.n++
		}
	})
}

// Named reports whether a Connection field named the field k.
func (ci *ConnInfo) Named(k []byte) bool {
	for _, t := range ci.names[:ci.n] {
		if bytes.EqualFold(k, t) {
			return true
		}
	}
	return false
}

// ParseLength reads a Content-Length value: digits only, at most 18.
func ParseLength(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// ChunkedEnd returns where the chunked body that starts at b[start:] ends,
// last chunk and final CRLF included, or -1 if it is not all in b, has
// trailers or a malformed size line, or holds more than max bytes of data.
// Chunk extensions are allowed (and kept in b).
func ChunkedEnd(b []byte, start, max int) int {
	pos, total := start, 0
	for {
		i := bytes.Index(b[pos:], []byte("\r\n"))
		if i <= 0 || i > 1024 {
			return -1
		}
		line := b[pos : pos+i]
		if j := bytes.IndexByte(line, ';'); j >= 0 {
			for _, c := range line[j:] {
				if byteClass[c]&classVisible == 0 && c != '\t' {
					return -1
				}
			}
			line = line[:j]
		}
		if len(line) == 0 || len(line) > 8 {
			return -1
		}
		n := 0
		for _, c := range line {
			switch {
			case '0' <= c && c <= '9':
				n = n<<4 | int(c-'0')
			case 'a' <= c && c <= 'f':
				n = n<<4 | int(c-'a'+10)
			case 'A' <= c && c <= 'F':
				n = n<<4 | int(c-'A'+10)
			default:
				return -1
			}
		}
		pos += i + 2
		if n == 0 { // the last chunk; no trailers
			if len(b) < pos+2 || b[pos] != '\r' || b[pos+1] != '\n' {
				return -1
			}
			return pos + 2
		}
		if total += n; total > max || len(b) < pos+n+2 || b[pos+n] != '\r' || b[pos+n+1] != '\n' {
			return -1
		}
		pos += n + 2
	}
}

// AnswerStatus reads an answer's status line: "HTTP/1.1 ", three digits
// and nothing or a blank and a reason. ok is false for anything else
// (HTTP/1.0 among others); the caller decides which statuses it takes.
func AnswerStatus(first []byte) (status int, ok bool) {
	if len(first) < 12 || string(first[:9]) != "HTTP/1.1 " || (len(first) > 12 && first[12] != ' ') {
		return 0, false
	}
	for _, c := range first[9:12] {
		if c < '0' || c > '9' {
			return 0, false
		}
		status = status*10 + int(c-'0')
	}
	return status, true
}

// Framing is what a head's fields say of its body and its connection,
// gathered field by field with Add.
type Framing struct {
	Length  int // the last Content-Length's value
	Lengths int // Content-Length fields
	Chunked int // Transfer-Encoding: chunked fields
	Conn    ConnInfo
}

// Add reads field f if it is one of framing's (Content-Length,
// Transfer-Encoding, Trailer, Connection): framing is then true, and ok is
// false for one outside the subset (a malformed length, a coding other
// than chunked, trailers announced).
func (fr *Framing) Add(f Field) (framing, ok bool) {
	switch {
	case NameIs(f.K, "Content-Length"):
		n, ok := ParseLength(f.V)
		fr.Length = n
		fr.Lengths++
		return true, ok
	case NameIs(f.K, "Transfer-Encoding"):
		fr.Chunked++
		return true, bytes.EqualFold(f.V, []byte("chunked"))
	case NameIs(f.K, "Trailer"):
		return true, false
	case NameIs(f.K, "Connection"):
		fr.Conn.Add(f.V)
		return true, true
	}
	return false, true
}

// Ambiguous reports a body framed twice or more (two lengths, two
// codings, a length beside a coding): never read, whatever the values say.
func (fr *Framing) Ambiguous() bool {
	return fr.Lengths > 1 || fr.Chunked > 1 || (fr.Chunked > 0 && fr.Lengths > 0)
}
