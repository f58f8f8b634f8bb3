package proxy

import (
	"bytes"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/hop"
)

// The requests and answers the event loop (evloop_linux.go) relays itself,
// and how it writes them; the loop stores the same requests for a buffer
// route (evstore_linux.go, which has fasthttp's parser read them again into
// the RequestCtx the shared handler code takes). It takes only the
// plainest HTTP/1.1: a head whose every line ends in CRLF and whose every
// field is a token, a colon and visible characters; a body with one
// Content-Length of up to wholeBodyMax.
// Everything else (chunked or expected bodies, upgrades, HTTP/1.0, repeated
// Host or X-Forwarded-For, a malformed byte anywhere) is not refused here: it
// goes to the fasthttp server and its hardening, as if the loop were not
// there (see evloop_linux.go). So these parsers need to be right only about
// what they accept, and what they write is what the fasthttp path writes for
// the same request and answer (TestEventLoopParity compares the two).

// maxFastFields is the most header fields a head the loop relays may have.
const maxFastFields = 64

// field is one header field of a head, its value without surrounding blanks.
type field struct{ k, v []byte }

// head is a parsed request or status line and its header fields, all
// slices of the bytes parsed.
type head struct {
	first  []byte
	fields [maxFastFields]field
	n      int
	size   int // bytes of the head, blank line included
}

// Results of head.parse and the request and answer checks.
const (
	parseMore = iota // the head (or body) has not all arrived
	parseOK
	parseOther // not for the loop: the fasthttp path takes it
)

// parse parses the head at the start of b.
func (h *head) parse(b []byte) int {
	h.n, h.size, h.first = 0, 0, nil
	pos := 0
	for {
		i := bytes.IndexByte(b[pos:], '\n')
		if i < 0 {
			return parseMore
		}
		if i == 0 || b[pos+i-1] != '\r' {
			return parseOther // a bare LF
		}
		line := b[pos : pos+i-1]
		pos += i + 1
		if h.first == nil {
			if len(line) == 0 {
				return parseOther
			}
			for _, c := range line {
				if byteClass[c]&classVisible == 0 {
					return parseOther
				}
			}
			h.first = line
			continue
		}
		if len(line) == 0 {
			h.size = pos
			return parseOK
		}
		if h.n == maxFastFields {
			return parseOther
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return parseOther
		}
		for _, c := range line[:colon] {
			if byteClass[c]&classToken == 0 {
				return parseOther
			}
		}
		v := line[colon+1:]
		for _, c := range v {
			if byteClass[c]&classValue == 0 {
				return parseOther
			}
		}
		for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
			v = v[1:]
		}
		for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
			v = v[:len(v)-1]
		}
		h.fields[h.n] = field{k: line[:colon], v: v}
		h.n++
	}
}

func isTokenChar(c byte) bool { return byteClass[c]&classToken != 0 }

// byteClass says what each byte may be in a head the loop relays: part of
// a token (a method, a field name), of a field value (visible, blank or
// obs-text), of the request or status line (no control character).
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

func nameIs(k []byte, name string) bool {
	return len(k) == len(name) && bytes.EqualFold(k, []byte(name))
}

// maxConnTokens is the most names a Connection field of a relayed request
// or answer may list.
const maxConnTokens = 8

// connInfo is what the Connection fields of a head say.
type connInfo struct {
	close bool
	names [maxConnTokens][]byte
	n     int
	over  bool
}

func (ci *connInfo) add(v []byte) {
	hop.Tokens(v, func(t []byte) {
		switch {
		case bytes.EqualFold(t, []byte("close")):
			ci.close = true
		case bytes.EqualFold(t, []byte("keep-alive")):
		case ci.n == maxConnTokens:
			ci.over = true
		default:
			ci.names[ci.n] = t
			ci.n++
		}
	})
}

func (ci *connInfo) named(k []byte) bool {
	for _, t := range ci.names[:ci.n] {
		if bytes.EqualFold(k, t) {
			return true
		}
	}
	return false
}

// parseLength reads a Content-Length value: digits only, at most 18.
func parseLength(v []byte) (int, bool) {
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

// fastRequest is a request the loop may relay.
type fastRequest struct {
	head
	method, target, host, xff []byte
	length                    int // the body's; 0 without Content-Length
	conn                      connInfo
}

// parse parses the request at the start of b: parseOK once the head and the
// whole body are in b (size() bytes), parseMore before, parseOther for one
// the fasthttp path must take.
func (r *fastRequest) parse(b []byte) int {
	if res := r.head.parse(b); res != parseOK {
		return res
	}
	sp1 := bytes.IndexByte(r.first, ' ')
	if sp1 <= 0 {
		return parseOther
	}
	rest := r.first[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 || string(rest[sp2+1:]) != "HTTP/1.1" {
		return parseOther
	}
	r.method, r.target = r.first[:sp1], rest[:sp2]
	for _, c := range r.method {
		if !isTokenChar(c) {
			return parseOther
		}
	}
	if r.target[0] != '/' || string(r.method) == fasthttp.MethodConnect {
		return parseOther
	}
	r.host, r.xff, r.length, r.conn = nil, nil, 0, connInfo{}
	hosts, xffs, lengths := 0, 0, 0
	for _, f := range r.fields[:r.n] {
		switch {
		case nameIs(f.k, "Host"):
			r.host = f.v
			hosts++
		case nameIs(f.k, "Content-Length"):
			n, ok := parseLength(f.v)
			if !ok {
				return parseOther
			}
			r.length = n
			lengths++
		case nameIs(f.k, "X-Forwarded-For"):
			r.xff = f.v
			xffs++
		case nameIs(f.k, "Connection"):
			r.conn.add(f.v)
		case nameIs(f.k, "Transfer-Encoding"), nameIs(f.k, "Expect"), nameIs(f.k, "Upgrade"):
			return parseOther
		}
	}
	if hosts != 1 || len(r.host) == 0 || xffs > 1 || lengths > 1 || r.conn.over || r.length > wholeBodyMax {
		return parseOther
	}
	if len(b) < r.size+r.length {
		return parseMore
	}
	return parseOK
}

// total is the request's bytes, head and body.
func (r *fastRequest) total() int { return r.size + r.length }

// idempotent reports whether the request may be sent again after a pooled
// connection turned out closed (retryStale's rule).
func (r *fastRequest) idempotent() bool {
	switch string(r.method) {
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions, fasthttp.MethodPut, fasthttp.MethodDelete, fasthttp.MethodTrace:
		return true
	}
	return false
}

// appendUpstream appends the request as route rt forwards it: uri (the
// normalised request-URI) under the upstream's path, its Host, the client's
// end-to-end fields with their names normalised as fasthttp's server does,
// X-Forwarded-For/-Proto/-Host, and the body (b holds the request).
func (r *fastRequest) appendUpstream(dst, b []byte, rt *route, uri []byte, ip netip.Addr) []byte {
	dst = append(dst, r.method...)
	dst = append(dst, ' ')
	if base := rt.Upstream.Path; base == "" || base == "/" {
		dst = append(dst, uri...)
	} else {
		dst = append(dst, joinPath(base, string(uri))...)
	}
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, rt.Upstream.Host...)
	dst = append(dst, "\r\n"...)
	typed := false
	for _, f := range r.fields[:r.n] {
		if nameIs(f.k, "Content-Type") {
			typed = true
		}
		if hop.Is(f.k) || r.conn.named(f.k) || nameIs(f.k, "Host") || nameIs(f.k, "X-Forwarded-For") ||
			nameIs(f.k, "X-Forwarded-Proto") || nameIs(f.k, "X-Forwarded-Host") {
			continue
		}
		dst = appendNormalizedName(dst, f.k)
		dst = append(dst, ": "...)
		dst = append(dst, f.v...)
		dst = append(dst, "\r\n"...)
	}
	if !typed && r.length > 0 {
		dst = append(dst, "Content-Type: application/octet-stream\r\n"...) // fasthttp's client adds it
	}
	dst = append(dst, "X-Forwarded-For: "...)
	if len(r.xff) > 0 {
		dst = append(dst, r.xff...)
		dst = append(dst, ", "...)
	}
	dst = ip.Unmap().AppendTo(dst)
	dst = append(dst, "\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "...)
	dst = append(dst, r.host...)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, b[r.size:r.total()]...)
}

// appendNormalizedName appends k as fasthttp's server normalises a field
// name: the first letter and each after a '-' upper case, the rest lower.
func appendNormalizedName(dst, k []byte) []byte {
	up := true
	for _, c := range k {
		switch {
		case up && 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case !up && 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		up = c == '-'
		dst = append(dst, c)
	}
	return dst
}

// fastAnswer is an upstream's answer the loop may relay.
type fastAnswer struct {
	head
	status      int
	length      int // the body's bytes (0 for an answer without a body)
	declared    int // its Content-Length
	server      []byte
	contentType []byte
	hasLength   bool
	chunked     bool // its body is chunked, and whole in the bytes parsed
	conn        connInfo
}

// parse parses the answer at the start of b to a request whose method was
// HEAD or not: parseOK once the head and the whole body are in b (size()
// bytes), parseMore before, parseOther for one the loop does not relay
// itself (1xx, HTTP/1.0, without a length, over wholeBodyMax, trailers).
// A chunked answer is the loop's only if it is whole in b already: one that
// is still coming may be a stream (server-sent events, progress), and goes
// to the goroutine that streams it at once.
func (a *fastAnswer) parse(b []byte, isHead bool) int {
	if res := a.head.parse(b); res != parseOK {
		return res
	}
	if len(a.first) < 12 || string(a.first[:9]) != "HTTP/1.1 " || (len(a.first) > 12 && a.first[12] != ' ') {
		return parseOther
	}
	st, err := strconv.Atoi(string(a.first[9:12]))
	if err != nil || st < 200 || st > 999 {
		return parseOther
	}
	a.status, a.length, a.hasLength, a.chunked, a.server, a.contentType, a.conn = st, 0, false, false, nil, nil, connInfo{}
	lengths, codings := 0, 0
	for _, f := range a.fields[:a.n] {
		switch {
		case nameIs(f.k, "Content-Length"):
			n, ok := parseLength(f.v)
			if !ok {
				return parseOther
			}
			a.length, a.declared, a.hasLength = n, n, true
			lengths++
		case nameIs(f.k, "Transfer-Encoding"):
			if !bytes.EqualFold(f.v, []byte("chunked")) {
				return parseOther
			}
			codings++
		case nameIs(f.k, "Trailer"):
			return parseOther
		case nameIs(f.k, "Connection"):
			a.conn.add(f.v)
		case nameIs(f.k, "Server"):
			a.server = f.v
		case nameIs(f.k, "Content-Type"):
			a.contentType = f.v
		}
	}
	bodiless := isHead || st == 204 || st == 304
	if codings > 0 {
		if codings > 1 || lengths > 0 || bodiless || a.conn.over {
			return parseOther
		}
		end := chunkedEnd(b, a.size)
		if end < 0 {
			return parseOther
		}
		a.chunked, a.length = true, end-a.size
		return parseOK
	}
	if lengths > 1 || a.conn.over || (!a.hasLength && !bodiless) || a.length > wholeBodyMax {
		return parseOther
	}
	if bodiless {
		a.length = 0
	}
	if len(b) < a.size+a.length {
		return parseMore
	}
	return parseOK
}

// total is the answer's bytes, head and body.
func (a *fastAnswer) total() int { return a.size + a.length }

// chunkedEnd returns where the chunked body that starts at b[start:] ends,
// last chunk and final CRLF included, or -1 if it is not all in b, has
// trailers or a malformed size line, or holds more than wholeBodyMax
// bytes. Chunk extensions are kept (the bytes are relayed as they came).
func chunkedEnd(b []byte, start int) int {
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
		if total += n; total > wholeBodyMax || len(b) < pos+n+2 || b[pos+n] != '\r' || b[pos+n+1] != '\n' {
			return -1
		}
		pos += n + 2
	}
}

// appendClient appends the answer as the fasthttp path gives it to the
// client: the status line as the upstream sent it, its Server or sluice's,
// sluice's Date, fasthttp's default Content-Type for a body without one,
// the end-to-end fields, Connection: close if the client's connection ends
// with it, and the body (b holds the answer). A 204 carries no
// Content-Length.
func (a *fastAnswer) appendClient(dst, b, date []byte, closing bool) []byte {
	dst = append(dst, a.first...)
	dst = append(dst, "\r\nServer: "...)
	if len(a.server) > 0 {
		dst = append(dst, a.server...)
	} else {
		dst = append(dst, "sluice"...)
	}
	dst = append(dst, "\r\nDate: "...)
	dst = append(dst, date...)
	dst = append(dst, "\r\n"...)
	if len(a.contentType) > 0 {
		dst = append(dst, "Content-Type: "...)
		dst = append(dst, a.contentType...)
		dst = append(dst, "\r\n"...)
	} else if a.status != 204 && a.status != 304 && (!a.hasLength || a.declared != 0) {
		dst = append(dst, "Content-Type: text/plain; charset=utf-8\r\n"...)
	}
	for _, f := range a.fields[:a.n] {
		if hop.Is(f.k) || a.conn.named(f.k) || nameIs(f.k, "Server") || nameIs(f.k, "Date") || nameIs(f.k, "Content-Type") {
			continue
		}
		if nameIs(f.k, "Content-Length") {
			if a.status != 204 {
				dst = append(dst, "Content-Length: "...)
				dst = append(dst, f.v...)
				dst = append(dst, "\r\n"...)
			}
			continue
		}
		dst = append(dst, f.k...)
		dst = append(dst, ": "...)
		dst = append(dst, f.v...)
		dst = append(dst, "\r\n"...)
	}
	if a.chunked {
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...) // hop-by-hop: dropped above, and this hop's too
	}
	if closing {
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, b[a.size:a.total()]...)
}

// appendErrorAnswer appends the answer writeError gives: status, a JSON
// error body naming code and msg.
func appendErrorAnswer(dst []byte, status int, code, msg string, date []byte, closing bool) []byte {
	body := errorJSON(code, msg)
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, fasthttp.StatusMessage(status)...)
	dst = append(dst, "\r\nServer: sluice\r\nDate: "...)
	dst = append(dst, date...)
	dst = append(dst, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\n"...)
	if closing {
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, body...)
}

// appendHTTPDate appends t as an HTTP date (RFC 9110 section 5.6.7).
func appendHTTPDate(dst []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(dst, http.TimeFormat)
}
