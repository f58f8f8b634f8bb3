package drain

import (
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
	st, ok := h1.AnswerStatus(a.First)
	if !ok || st < 200 {
		return h1.Other
	}
	a.status, a.length, a.close, a.retryAfter = st, 0, false, nil
	var fr h1.Framing
	for _, f := range a.Fields[:a.N] {
		if framing, ok := fr.Add(f); !ok {
			return h1.Other
		} else if !framing && a.retryAfter == nil && h1.NameIs(f.K, "Retry-After") {
			a.retryAfter = f.V
		}
	}
	a.close = fr.Conn.Close
	if isHead || st == 204 || st == 304 {
		if fr.Lengths == 0 && fr.Chunked == 0 && st != 204 && st != 304 {
			a.close = true // unframed: fasthttp ends the connection after it
		}
		return h1.OK // no body, whatever the fields say
	}
	a.length = fr.Length
	switch {
	case fr.Ambiguous():
		return h1.Other
	case fr.Chunked == 1:
		end := h1.ChunkedEnd(b, a.Size, chunkedMax)
		if end < 0 {
			return h1.Other
		}
		a.length = end - a.Size
	case fr.Lengths == 0:
		return h1.Other // read to the end of the connection
	}
	return h1.OK
}
