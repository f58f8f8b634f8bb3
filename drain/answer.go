package drain

import (
	"bytes"

	"github.com/sluice-proxy/sluice/internal/h1"
)

// loopAnswer is a target's answer that the drainer's event loop
// (loop_linux.go) reads itself: the plainest HTTP/1.1 (internal/h1's
// subset), a status of 200 or more, and a body framed by one
// Content-Length, chunked and whole within what was read, or none (HEAD,
// 204, 304). Everything else (1xx, HTTP/1.0, a body read to the end of
// the connection, trailers, a chunked body still coming, a malformed byte)
// the loop hands, with the bytes read, to a goroutine that reads it with
// fasthttp as the worker path does. The parser need be right only about
// what it accepts: FuzzLoopAnswer holds it to fasthttp's reading.
type loopAnswer struct {
	h1.Head
	status int
	// length is the body's bytes after the head: the Content-Length, or
	// the whole chunked body's encoded bytes; 0 for a bodiless answer.
	length     int
	close      bool   // Connection: close
	retryAfter []byte // the first Retry-After field's value; nil if none
}

// chunkedMax bounds the chunked bodies the loop reads itself (all of it
// must have come in one read buffer).
const chunkedMax = 60 << 10

// parse parses the answer at the start of b to a request whose method was
// HEAD or not: h1.OK once the head is in b (the body, length bytes, may
// still be coming), h1.More before, h1.Other for an answer the loop does
// not read itself.
func (a *loopAnswer) parse(b []byte, isHead bool) int {
	if res := a.Head.Parse(b); res != h1.OK {
		return res
	}
	f := a.First
	if len(f) < 12 || string(f[:9]) != "HTTP/1.1 " || (len(f) > 12 && f[12] != ' ') {
		return h1.Other
	}
	st := 0
	for _, c := range f[9:12] {
		if c < '0' || c > '9' {
			return h1.Other
		}
		st = st*10 + int(c-'0')
	}
	if st < 200 {
		return h1.Other
	}
	a.status, a.length, a.close, a.retryAfter = st, 0, false, nil
	lengths, codings := 0, 0
	var conn h1.ConnInfo
	for _, fd := range a.Fields[:a.N] {
		switch {
		case h1.NameIs(fd.K, "Content-Length"):
			n, ok := h1.ParseLength(fd.V)
			if !ok {
				return h1.Other
			}
			a.length = n
			lengths++
		case h1.NameIs(fd.K, "Transfer-Encoding"):
			if !bytes.EqualFold(fd.V, []byte("chunked")) {
				return h1.Other
			}
			codings++
		case h1.NameIs(fd.K, "Trailer"):
			return h1.Other
		case h1.NameIs(fd.K, "Connection"):
			conn.Add(fd.V)
		case h1.NameIs(fd.K, "Retry-After"):
			if a.retryAfter == nil {
				a.retryAfter = fd.V
			}
		}
	}
	a.close = conn.Close
	if isHead || st == 204 || st == 304 {
		a.length = 0 // no body, whatever the fields say
		if lengths == 0 && codings == 0 && st != 204 && st != 304 {
			a.close = true // unframed: fasthttp ends the connection after it
		}
		return h1.OK
	}
	switch {
	case codings > 1, codings == 1 && lengths > 0, lengths > 1:
		return h1.Other
	case codings == 1:
		end := h1.ChunkedEnd(b, a.Size, chunkedMax)
		if end < 0 {
			return h1.Other
		}
		a.length = end - a.Size
	case lengths == 0:
		return h1.Other // read to the end of the connection
	}
	return h1.OK
}
