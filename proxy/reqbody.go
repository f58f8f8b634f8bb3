package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"math"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/netio"
)

// Request bodies.
//
// The listener runs with fasthttp's StreamRequestBody, so that a passthrough
// route can forward a large upload as it arrives. fasthttp has no per-request
// choice between streaming and reading whole (Server.StreamRequestBody is one
// flag for every connection), so the choice is made here, per route, once the
// handler runs:
//
//   - buffer and spillover routes call readBody before their handler, which
//     reads the rest of the body into fasthttp's own request body buffer, up
//     to max_body, so that ctx.PostBody() is the whole body as it was before
//     streaming was turned on. A Content-Length body of up to 8 KiB has
//     already been read whole by fasthttp (its prefetch, see below) into that
//     buffer; readBody reads it again from the stream onto itself, which
//     marks the stream consumed (a keep-alive connection's next response is
//     then not flushed early) and costs a memmove of at most 8 KiB; no buffer
//     is allocated and the body is not copied anywhere else. A larger body is
//     read straight from the connection's reader into the buffer, grown once
//     to its Content-Length; a chunked body grows it by doubling, up to
//     max_body + 1 bytes.
//   - passthrough routes read a body of up to wholeBodyMax bytes the same way
//     (so a small request is forwarded exactly as before, and an idempotent
//     one may still be retried on a stale pooled connection), and stream a
//     larger or chunked one: see upload.
//
// How fasthttp (v1.78) streams, which this relies on:
//
//   - After the headers, it prefetches min(max body, Content-Length, 8 KiB)
//     bytes of a Content-Length body into the request's body buffer, blocking
//     until they arrive, then calls the handler with Request.BodyStream
//     serving those bytes first and the rest from the connection
//     (http.go readBodyWithStreaming, streaming.go requestStream.read). A
//     Content-Length above the limit is not refused: the handler gets the
//     stream. A chunked body is not prefetched at all.
//   - After the handler, the server discards what it left unread, up to
//     256 KiB, or closes the connection (server.go, maxUnreadStreamBodySize);
//     a stream whose Read failed always closes it.
//   - PostBody on a request with a stream reads the whole stream, without a
//     limit; readBody closes the stream first, so PostBody returns the buffer.
//
// What buffered routes pay for this, against StreamRequestBody off: per
// request with a body, a requestStream from fasthttp's pool and, after the
// handler, one 24-byte allocation in fasthttp's drain of the (already
// consumed) stream (streaming.go discard: io.CopyN's LimitedReader), plus the
// memmove above; a chunked body's buffer is allocated per request, since
// fasthttp drops the pooled buffer's bytes for a chunked stream.
//
// An oversized Content-Length is refused with 413 before any of the body is
// read, as before: headerReceived (which sees the headers before fasthttp's
// prefetch) sets the request's Content-Length to 0, so that the prefetch
// waits for nothing, marks the request with Connection: close (the unread
// body must not be taken for the next request) and a header carrying a
// random per-process token, and handle answers 413 to a request so marked.

// wholeBodyMax is the largest Content-Length a passthrough route reads whole
// before forwarding; larger and chunked bodies are streamed to the upstream.
const wholeBodyMax = 64 << 10

// noRouteMaxBody is the body limit of a request no route takes (it is
// answered 404 or 405).
const noRouteMaxBody = 64 << 10

// progressBytes and the server's read_timeout bound a streamed upload: the
// read deadline moves to now + read_timeout each time this many more bytes
// of the body have arrived, so an upload may take as long as it needs while
// it moves at progressBytes per read_timeout at least.
const progressBytes = 64 << 10

// tooLargeHeader marks a request refused by headerReceived; its value is the
// server's token, which a client cannot know.
const tooLargeHeader = "X-Sluice-Internal-Body-Too-Large"

func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// bodyLimitInt converts a max_body to the int of fasthttp.RequestConfig. With
// StreamRequestBody it only sizes fasthttp's prefetch (at most 8 KiB).
func bodyLimitInt(n int64) int {
	return int(min(n, math.MaxInt32))
}

// refuseBody makes fasthttp hand a request whose Content-Length exceeds its
// route's max_body to the handler without reading any of the body, marked so
// that handle answers it 413. Called from headerReceived.
func (s *Server) refuseBody(h *fasthttp.RequestHeader) {
	h.Del(fasthttp.HeaderExpect) // no "100 Continue": the answer is 413 at once
	h.SetContentLength(0)
	h.SetConnectionClose()
	h.Set(tooLargeHeader, s.tooLargeToken)
}

// refusedBody answers 413 to a request marked by refuseBody and reports
// whether it did. The test before the header lookup costs two field reads.
func (s *Server) refusedBody(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	if h.ContentLength() != 0 || !h.ConnectionClose() || string(h.Peek(tooLargeHeader)) != s.tooLargeToken {
		return false
	}
	s.handleError(ctx, fasthttp.ErrBodyTooLarge)
	ctx.SetConnectionClose()
	return true
}

// readBody reads the whole request body, up to limit bytes, into the
// request's body buffer, where ctx.PostBody() finds it. On failure it has
// answered (413, 408 or 400, as fasthttp's own reading did, through
// handleError) and closed the connection, and it returns false.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, limit int64) bool {
	req := &ctx.Request
	stream := req.BodyStream()
	if stream == nil {
		return true // no body, or read whole already (a server without StreamRequestBody)
	}
	cl := req.Header.ContentLength()
	if int64(cl) > limit { // refuseBody has answered these; this covers a server of a test
		s.bodyError(ctx, fasthttp.ErrBodyTooLarge)
		return false
	}
	// The server still owns the stream (it drains and releases it after the
	// handler); closing only detaches it, so that Body returns the buffer.
	req.CloseBodyStream()
	buf := req.Body()[:0] // the prefetched bytes, in fasthttp's pooled buffer
	var err error
	if cl >= 0 {
		if cap(buf) < cl {
			buf = make([]byte, 0, cl)
		}
		buf = buf[:cl]
		_, err = io.ReadFull(stream, buf) // the prefetched part lands on itself
	} else {
		buf, err = readChunked(stream, buf, limit)
	}
	if err != nil {
		s.bodyError(ctx, err)
		return false
	}
	if cl < 0 && len(buf) == 0 {
		req.Header.SetContentLength(0) // as fasthttp's Request.ReadBody does
	}
	req.SwapBody(buf) // no copy: buf becomes the pooled buffer's bytes
	return true
}

// readChunked appends the rest of a chunked body from r to buf, failing with
// fasthttp.ErrBodyTooLarge as soon as it exceeds limit.
func readChunked(r io.Reader, buf []byte, limit int64) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			n := int64(max(2*cap(buf), 4<<10))
			if limit < math.MaxInt64 && n > limit+1 {
				n = limit + 1
			}
			if n <= int64(len(buf)) {
				return buf, fasthttp.ErrBodyTooLarge
			}
			nb := make([]byte, len(buf), n)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case int64(len(buf)) > limit:
			return buf, fasthttp.ErrBodyTooLarge
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return buf, err
		}
	}
}

// bodyError answers a request whose body could not be read and closes the
// connection (the stream is at an unknown offset).
func (s *Server) bodyError(ctx *fasthttp.RequestCtx, err error) {
	ctx.Response.Reset()
	s.handleError(ctx, err)
	ctx.SetConnectionClose()
}

// upload is a passthrough request's body as the upstream client reads it:
// the server's request stream, with the route's max_body applied to a
// chunked body, a Content-Length body cut short turned into an error, and
// the client's read deadline moved forward as the body arrives (see
// progressBytes). Its first error is kept in err, so the handler can tell a
// failure of the client's side from one of the upstream's.
//
// An error makes the upstream client stop writing the request and close the
// upstream connection: a chunked body then lacks its last chunk and a
// Content-Length body its last bytes, so the upstream never takes a cut body
// for a whole one.
type upload struct {
	r       io.Reader // the server's request stream
	ctx     *fasthttp.RequestCtx
	limit   int64
	cl      int64 // Content-Length; -1: chunked
	n       int64 // bytes read
	moved   int64 // n when the read deadline last moved
	timeout time.Duration
	eof     bool
	err     error
}

func (u *upload) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	if u.eof {
		return 0, io.EOF
	}
	n, err := u.r.Read(p)
	u.n += int64(n)
	switch {
	case u.n > u.limit:
		u.err = fasthttp.ErrBodyTooLarge
		return 0, u.err
	case err == io.EOF && u.cl >= 0 && u.n < u.cl:
		u.err = io.ErrUnexpectedEOF
		return 0, u.err
	case err == io.EOF:
		u.eof = true
	case err != nil:
		u.err = err
		return 0, err
	}
	if u.timeout > 0 && u.n-u.moved >= progressBytes {
		u.moved = u.n
		u.ctx.SetReadDeadline(time.Now().Add(u.timeout)) //nolint:errcheck // a failure leaves the earlier deadline
	}
	return n, err
}

// done reports whether the whole body was read.
func (u *upload) done() bool {
	return u.eof || (u.cl >= 0 && u.n == u.cl)
}

// progressConn is an upstream connection whose write deadline moves to now +
// timeout at each write, so a long upload is bounded by its progress, not by
// one deadline for the whole request: the pool sets its WriteTimeout once per
// request (client.go, transport RoundTrip). Reads are untouched; the pool's
// ReadTimeout still bounds the wait for the answer. Its deadlines are armed
// lazily (netio.Conn), so moving one at each write costs no timer update.
type progressConn struct {
	*netio.Conn
	timeout time.Duration
}

func newProgressConn(c net.Conn, timeout time.Duration) *progressConn {
	return &progressConn{Conn: netio.NewConn(c), timeout: timeout}
}

func (c *progressConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
