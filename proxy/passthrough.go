package proxy

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"

	"github.com/sluice-proxy/sluice/policies"
)

// upstreamWriteTimeout bounds each write of a request to an upstream (see
// progressConn): a streamed upload may take longer in all, while it moves.
const upstreamWriteTimeout = 60 * time.Second

// newUpstream returns a keep-alive pool to a passthrough route's upstream,
// whose answers must be read within timeout (the route's timeout; 0: the
// default).
//
// One request is one attempt: fasthttp would resend an idempotent request
// (GET, HEAD, PUT) up to five times, each after its own timeout, so an
// upstream that takes requests and never answers got a PUT five times and
// the client waited five timeouts. The only resend is retryStale's.
func newUpstream(u *url.URL, timeout time.Duration) *fasthttp.HostClient {
	if timeout <= 0 {
		timeout = policies.DefaultUpstreamTimeout
	}
	addr := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	return &fasthttp.HostClient{
		Addr:                          addr,
		IsTLS:                         u.Scheme == "https",
		MaxConns:                      1024,
		MaxIdleConnDuration:           30 * time.Second,
		ReadTimeout:                   timeout,
		MaxIdemponentCallAttempts:     2, // the first, and at most one retryStale allows
		RetryIfErr:                    retryStale,
		SecureErrorLogMessage:         true, // fasthttp's errors quote no request or response bytes
		WriteTimeout:                  upstreamWriteTimeout,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,

		// The pool sets WriteTimeout once per request; progressConn moves
		// the deadline at each write, so a streamed upload is bounded by its
		// progress. It arms the pool's deadlines lazily (netio.Conn). The dial itself is fasthttp's default (Dial: 3s, with a
		// DNS cache); TLS is layered on top by the pool, as before.
		Dial: func(addr string) (net.Conn, error) {
			c, err := fasthttp.Dial(addr)
			if err != nil {
				return nil, err
			}
			return newProgressConn(c, upstreamWriteTimeout), nil
		},
		// Do returns once the upstream's status line and headers are read;
		// the body stays on the upstream connection as Response.BodyStream,
		// which the server copies to the client as it arrives (bufio.Writer
		// reads it in 4 KiB pieces) and then closes, returning the connection
		// to the pool. A large answer is never held whole in memory, and a
		// small one is copied once instead of twice. Only this pool streams:
		// spillover and the drainers use their own clients, which read the
		// whole answer (they keep it).
		StreamResponseBody: true,
	}
}

// retryStale allows the one resend of a request: an idempotent one (RFC 9110
// section 9.2.2) without a streamed body, whose connection was closed before
// any byte of an answer came. That is what a pooled keep-alive connection
// the upstream has just closed as idle looks like; a timeout or any other
// failure is never resent.
func retryStale(req *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	if attempts > 1 || req.IsBodyStream() || !(errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF)) {
		return false, false
	}
	switch string(req.Header.Method()) {
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions, fasthttp.MethodPut, fasthttp.MethodDelete, fasthttp.MethodTrace:
		return false, true
	}
	return false, false
}

// newLimiter returns the token bucket of a passthrough route's rate, or nil
// when the rate is unlimited. A paused rate (0) refuses everything.
func newLimiter(r policies.Rate, burst int) *rate.Limiter {
	if r.Unlimited {
		return nil
	}
	if r.Paused() {
		return rate.NewLimiter(0, 0) // nothing passes
	}
	return rate.NewLimiter(rate.Limit(r.PerSecond), max(burst, 1))
}

// handlePassthrough forwards the request to the route's upstream, and only
// there: the connection pool dials only the upstream's address, and the Host
// header and any absolute URI the client sent are replaced, so sluice is
// never an open proxy. The request is forwarded in place (no copy of its
// headers or body).
//
// The request body is streamed when it is larger than wholeBodyMax (64 KiB)
// or chunked: the upstream client reads it from the client's
// connection as it writes the request (see upload), so memory is bounded by
// the connection buffers, not by the body's size, and a Content-Length body
// goes on with its Content-Length, a chunked one chunked. A smaller body is
// read whole first and forwarded as before. The route's max_body holds
// either way: a Content-Length over it is answered 413 before any of the body
// is read (headerReceived); a chunked body that passes it aborts the
// upstream request (the upstream gets no last chunk and a closed connection)
// and is answered 413 with the connection closed. Likewise a body cut short,
// malformed or too slow (see progressBytes) aborts the upstream request and
// is answered 400 or 408. If the upstream fails while the body is still
// arriving, the answer is 502 (504 on a timeout) and the client's connection
// is closed, since the rest of the body is still on it. A request is sent
// once: only a small idempotent one whose pooled connection closed before any
// answer is resent, once (retryStale); a timeout is never resent, so the
// client waits at most the route's timeout for the answer. The pool writes the whole request before
// it reads the answer, so an upstream that answers early (say its own 413)
// and stops reading is seen as a failed write: 502, or 504 once a write has
// made no progress for 60s.
//
// An answer with a Content-Length of up to wholeBodyMax is read whole before
// the client is written to (smallAnswer): if the upstream cuts it short, the
// client gets 502. A larger or chunked answer is streamed: its headers are in
// ctx.Response when Do returns, and its body is copied to the client after
// this handler returns, as it arrives, so memory does not grow with its size. The upstream
// connection is held until the body is written, within the server's
// write_timeout and the route's timeout (default 60s). If the upstream fails in the
// middle of the body, the client's connection is closed (the status line has
// gone out), so a truncated answer is never taken for a whole one.
func (s *Server) handlePassthrough(ctx *fasthttp.RequestCtx, r *route, uri []byte) {
	req := &ctx.Request
	var up *upload
	if stream := req.BodyStream(); stream != nil {
		if cl := req.Header.ContentLength(); cl >= 0 && cl <= wholeBodyMax {
			if !s.readBody(ctx, r.MaxBody) {
				return
			}
		} else {
			up = &upload{r: stream, ctx: ctx, limit: r.MaxBody, cl: int64(cl), timeout: s.readTimeout}
		}
	}
	if r.limiter != nil && !r.limiter.Allow() {
		s.tooMany(ctx, r)
		if up != nil {
			ctx.SetConnectionClose() // the body was not read
		}
		return
	}
	closeAfter := req.Header.ConnectionClose()

	// X-Forwarded-*: appended to (For) or set (Proto, Host) before the
	// request's own Host is replaced.
	var xb [256]byte
	xff := append(xb[:0], req.Header.Peek("X-Forwarded-For")...)
	if len(xff) > 0 {
		xff = append(xff, ", "...)
	}
	xff = appendClientIP(xff, ctx)
	var hb [128]byte
	host := append(hb[:0], ctx.Host()...)
	stripHop(&req.Header)
	req.Header.SetBytesV("X-Forwarded-For", xff)
	if ctx.IsTLS() {
		req.Header.Set("X-Forwarded-Proto", "https")
	} else {
		req.Header.Set("X-Forwarded-Proto", "http")
	}
	req.Header.SetBytesV("X-Forwarded-Host", host)

	// The normalised path (path.go), as routed, in origin form whatever the
	// client sent. uri may lie in the header's own request-URI buffer: the
	// copy into it is a memmove, safe when they overlap.
	if base := r.Upstream.Path; base == "" || base == "/" {
		req.SetRequestURIBytes(uri)
	} else {
		req.SetRequestURI(joinPath(base, string(uri)))
	}
	req.Header.SetHost(r.Upstream.Host)
	req.URI().SetScheme(r.Upstream.Scheme)
	req.URI().SetHost(r.Upstream.Host)
	if up != nil {
		// Content-Length as the client sent it, or -1: chunked. The server's
		// stream stays the server's to drain and release.
		req.SetBodyStream(up, int(up.cl))
	}

	err := r.upstream.Do(req, &ctx.Response)
	switch {
	case up != nil && up.err != nil:
		// The client's side failed (body too large, cut, malformed or too
		// slow); the upstream request was aborted with it.
		s.log.Info("passthrough: request body failed; upstream request aborted", "route", r.Name, "reason", clientErrorKind(up.err))
		s.bodyError(ctx, up.err)
	case err != nil:
		ctx.Response.Reset()
		status, code := fasthttp.StatusBadGateway, "upstream_unreachable"
		if errors.Is(err, fasthttp.ErrTimeout) {
			status, code = fasthttp.StatusGatewayTimeout, "upstream_timeout"
		}
		s.log.Warn("passthrough failed", "route", r.Name, "err", err)
		writeError(ctx, status, code, "upstream of route "+r.Name+": "+err.Error())
		if up != nil && !up.done() {
			ctx.SetConnectionClose() // the rest of the body is still on the connection
		}
	default:
		stripHopResponse(&ctx.Response.Header)
		s.smallAnswer(ctx, r)
	}
	if closeAfter {
		ctx.SetConnectionClose()
	}
}

// smallAnswer reads an answer of up to wholeBodyMax bytes with a
// Content-Length whole, here, instead of leaving it to stream after the
// handler: the upstream connection goes back to the pool before the client
// is written to, and the server writes the answer from one buffer, without
// the stream's copy loop. A larger or chunked answer streams as before. If
// the upstream fails within the body, the answer is 502, or 504 on a timeout
// (nothing has gone to the client yet).
func (s *Server) smallAnswer(ctx *fasthttp.RequestCtx, r *route) {
	res := &ctx.Response
	stream := res.BodyStream()
	cl := res.Header.ContentLength()
	if stream == nil || cl < 0 || cl > wholeBodyMax {
		return
	}
	bp := answerPool.Get().(*[]byte)
	defer answerPool.Put(bp)
	if cap(*bp) < cl {
		*bp = make([]byte, cl)
	}
	buf := (*bp)[:cl]
	_, err := io.ReadFull(stream, buf)
	if cerr := res.CloseBodyStream(); err == nil {
		err = cerr
	}
	if err != nil {
		res.Reset()
		status, code := fasthttp.StatusBadGateway, "upstream_unreachable"
		if errors.Is(err, fasthttp.ErrTimeout) || os.IsTimeout(err) {
			status, code = fasthttp.StatusGatewayTimeout, "upstream_timeout"
		}
		s.log.Warn("passthrough failed in the answer's body", "route", r.Name, "err", err)
		writeError(ctx, status, code, "upstream of route "+r.Name+": the answer's body was cut short")
		return
	}
	res.SetBody(buf) // copied into the response's pooled buffer
}

// answerPool holds the buffers smallAnswer reads answers into.
var answerPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// tooMany answers a request beyond a passthrough route's rate: 429 with the
// seconds until the bucket has a token again.
func (s *Server) tooMany(ctx *fasthttp.RequestCtx, r *route) {
	res := r.limiter.Reserve()
	wait := res.Delay()
	res.Cancel()
	secs := 1
	if wait > time.Second && wait != rate.InfDuration {
		secs = int(math.Ceil(wait.Seconds()))
	} else if wait == rate.InfDuration {
		secs = 60 // paused (rate 0): nothing will pass until the policy changes
	}
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
	writeError(ctx, fasthttp.StatusTooManyRequests, "rate_limited",
		fmt.Sprintf("route %q allows %s (burst %d); retry after %ds", r.Name, r.Rate, r.Burst, secs))
}

// joinPath puts a request URI under a base path with exactly one slash at the joint.
func joinPath(base, uri string) string {
	if base == "" || base == "/" {
		return uri
	}
	switch {
	case base[len(base)-1] == '/' && len(uri) > 0 && uri[0] == '/':
		return base + uri[1:]
	case base[len(base)-1] != '/' && (len(uri) == 0 || uri[0] != '/'):
		return base + "/" + uri
	}
	return base + uri
}
