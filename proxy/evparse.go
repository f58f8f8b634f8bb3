package proxy

import (
	"bytes"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/h1"
	"github.com/sluice-proxy/sluice/internal/hop"
)

// The requests and answers the event loop (evloop_linux.go) relays itself,
// and how it writes them; the loop stores the same requests for a buffer
// route (evstore_linux.go, which has fasthttp's parser read them again into
// the RequestCtx the shared handler code takes). It takes only the
// plainest HTTP/1.1: a head internal/h1 reads (every line ends in CRLF,
// every field is a token, a colon and visible characters; the drainers'
// delivery loops read answers with the same parser); a body with one
// Content-Length of up to wholeBodyMax.
// Everything else (chunked or expected bodies, upgrades, HTTP/1.0, repeated
// Host or X-Forwarded-For, a malformed byte anywhere) is not refused here: it
// goes to the fasthttp server and its hardening, as if the loop were not
// there (see evloop_linux.go). So these parsers need to be right only about
// what they accept, and what they write is what the fasthttp path writes for
// the same request and answer (TestEventLoopParity compares the two).

// fastRequest is a request the loop may relay.
type fastRequest struct {
	h1.Head
	method, target, host, xff []byte
	length                    int // the body's; 0 without Content-Length
	conn                      h1.ConnInfo
}

// parse parses the request at the start of b: h1.OK once the head and the
// whole body are in b (size() bytes), h1.More before, h1.Other for one
// the fasthttp path must take.
func (r *fastRequest) parse(b []byte) int {
	if res := r.Head.Parse(b); res != h1.OK {
		return res
	}
	sp1 := bytes.IndexByte(r.First, ' ')
	if sp1 <= 0 {
		return h1.Other
	}
	rest := r.First[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 || string(rest[sp2+1:]) != "HTTP/1.1" {
		return h1.Other
	}
	r.method, r.target = r.First[:sp1], rest[:sp2]
	for _, c := range r.method {
		if !h1.IsTokenChar(c) {
			return h1.Other
		}
	}
	if r.target[0] != '/' || string(r.method) == fasthttp.MethodConnect {
		return h1.Other
	}
	r.host, r.xff, r.length, r.conn = nil, nil, 0, h1.ConnInfo{}
	hosts, xffs, lengths := 0, 0, 0
	for _, f := range r.Fields[:r.N] {
		switch {
		case h1.NameIs(f.K, "Host"):
			r.host = f.V
			hosts++
		case h1.NameIs(f.K, "Content-Length"):
			n, ok := h1.ParseLength(f.V)
			if !ok {
				return h1.Other
			}
			r.length = n
			lengths++
		case h1.NameIs(f.K, "X-Forwarded-For"):
			r.xff = f.V
			xffs++
		case h1.NameIs(f.K, "Connection"):
			r.conn.Add(f.V)
		case h1.NameIs(f.K, "Transfer-Encoding"), h1.NameIs(f.K, "Expect"), h1.NameIs(f.K, "Upgrade"):
			return h1.Other
		}
	}
	if hosts != 1 || len(r.host) == 0 || xffs > 1 || lengths > 1 || r.conn.Over || r.length > wholeBodyMax {
		return h1.Other
	}
	if len(b) < r.Size+r.length {
		return h1.More
	}
	return h1.OK
}

// total is the request's bytes, head and body.
func (r *fastRequest) total() int { return r.Size + r.length }

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
	for _, f := range r.Fields[:r.N] {
		if h1.NameIs(f.K, "Content-Type") {
			typed = true
		}
		if hop.Is(f.K) || r.conn.Named(f.K) || h1.NameIs(f.K, "Host") || h1.NameIs(f.K, "X-Forwarded-For") ||
			h1.NameIs(f.K, "X-Forwarded-Proto") || h1.NameIs(f.K, "X-Forwarded-Host") {
			continue
		}
		dst = appendNormalizedName(dst, f.K)
		dst = append(dst, ": "...)
		dst = append(dst, f.V...)
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
	return append(dst, b[r.Size:r.total()]...)
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
	h1.Head
	status      int
	length      int // the body's bytes (0 for an answer without a body)
	declared    int // its Content-Length
	server      []byte
	contentType []byte
	hasLength   bool
	chunked     bool // its body is chunked, and whole in the bytes parsed
	conn        h1.ConnInfo
}

// parse parses the answer at the start of b to a request whose method was
// HEAD or not: h1.OK once the head and the whole body are in b (size()
// bytes), h1.More before, h1.Other for one the loop does not relay
// itself (1xx, HTTP/1.0, without a length, over wholeBodyMax, trailers).
// A chunked answer is the loop's only if it is whole in b already: one that
// is still coming may be a stream (server-sent events, progress), and goes
// to the goroutine that streams it at once.
func (a *fastAnswer) parse(b []byte, isHead bool) int {
	if res := a.Head.Parse(b); res != h1.OK {
		return res
	}
	st, ok := h1.AnswerStatus(a.First)
	if !ok || st < 200 {
		return h1.Other
	}
	a.status, a.length, a.hasLength, a.chunked, a.server, a.contentType = st, 0, false, false, nil, nil
	var fr h1.Framing
	for _, f := range a.Fields[:a.N] {
		if framing, ok := fr.Add(f); !ok {
			return h1.Other
		} else if framing {
			continue
		}
		switch {
		case h1.NameIs(f.K, "Server"):
			a.server = f.V
		case h1.NameIs(f.K, "Content-Type"):
			a.contentType = f.V
		}
	}
	a.conn = fr.Conn
	lengths, codings := fr.Lengths, fr.Chunked
	if lengths > 0 {
		a.length, a.declared, a.hasLength = fr.Length, fr.Length, true
	}
	bodiless := isHead || st == 204 || st == 304
	if codings > 0 {
		if codings > 1 || lengths > 0 || bodiless || a.conn.Over {
			return h1.Other
		}
		end := h1.ChunkedEnd(b, a.Size, wholeBodyMax)
		if end < 0 {
			return h1.Other
		}
		a.chunked, a.length = true, end-a.Size
		return h1.OK
	}
	if lengths > 1 || a.conn.Over || (!a.hasLength && !bodiless) || a.length > wholeBodyMax {
		return h1.Other
	}
	if bodiless {
		a.length = 0
	}
	if len(b) < a.Size+a.length {
		return h1.More
	}
	return h1.OK
}

// total is the answer's bytes, head and body.
func (a *fastAnswer) total() int { return a.Size + a.length }

// appendClient appends the answer as the fasthttp path gives it to the
// client: the status line as the upstream sent it, its Server or sluice's,
// sluice's Date, fasthttp's default Content-Type for a body without one,
// the end-to-end fields, Connection: close if the client's connection ends
// with it, and the body (b holds the answer). A 204 carries no
// Content-Length.
func (a *fastAnswer) appendClient(dst, b, date []byte, closing bool) []byte {
	dst = append(dst, a.First...)
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
	for _, f := range a.Fields[:a.N] {
		if hop.Is(f.K) || a.conn.Named(f.K) || h1.NameIs(f.K, "Server") || h1.NameIs(f.K, "Date") || h1.NameIs(f.K, "Content-Type") {
			continue
		}
		if h1.NameIs(f.K, "Content-Length") {
			if a.status != 204 {
				dst = append(dst, "Content-Length: "...)
				dst = append(dst, f.V...)
				dst = append(dst, "\r\n"...)
			}
			continue
		}
		dst = append(dst, f.K...)
		dst = append(dst, ": "...)
		dst = append(dst, f.V...)
		dst = append(dst, "\r\n"...)
	}
	if a.chunked {
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...) // hop-by-hop: dropped above, and this hop's too
	}
	if closing {
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, b[a.Size:a.total()]...)
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
