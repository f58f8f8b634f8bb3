package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"

	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// concurrencyMargin is how far fasthttp's own connection limit lies above
// server.max_connections (see limitListener).
const concurrencyMargin = 64

// StatusPrefix is the path of the status API on the public listener.
const StatusPrefix = "/_sluice/v1/messages/"

// Config configures a Server.
type Config struct {
	Policy *policies.Policy
	// Queues holds the queue of every buffer and spillover route, by route
	// name, opened by the caller (cmd/sluice opens them in the store).
	Queues map[string]store.Queue
	Logger *slog.Logger // default slog.Default()
	// AdminToken is the operators' token (admin.token): a status request
	// that carries it (Authorization: Bearer) sees captured response bodies,
	// and passes status_api.token. "" = captured bodies are never shown.
	AdminToken string
	// Observer, if set, is told the outcome of every request that matched
	// a buffer or spillover route, for metrics. Default none.
	Observer Observer
}

// Observer receives the outcome of each request to a buffer or spillover
// route once its reply is written: status is the HTTP status, code the
// error code of a refusal ("" when accepted or forwarded), elapsed the time
// from the request's arrival (after its headers and body were read) to its
// reply. It is called on the request's goroutine, or on the event loop that
// serves it (evstore_linux.go), and must not block.
type Observer interface {
	Observe(route string, status int, code string, elapsed time.Duration)
}

// Server is sluice's public listener.
type Server struct {
	cfg      Config
	log      *slog.Logger
	table    atomic.Pointer[routeTable] // swapped whole by SetRoutes
	fallback *route                     // default_upstream as a passthrough route; nil if none
	engine   atomic.Pointer[engine]     // the event loops of Serve, if any
	// eventLoops is the number of event loops Serve runs (server.event_loops).
	eventLoops int
	srv        *fasthttp.Server
	tls        *tls.Config // nil: plain HTTP

	maxHeader int64 // server.max_header_bytes, for the 431 message
	maxConns  int   // server.max_connections, applied by limitListener

	readTimeout   time.Duration // server.read_timeout; see upload (reqbody.go)
	tooLargeToken string        // marks a request refused by refuseBody

	appendCtx context.Context // cancelled by Shutdown
	stop      context.CancelFunc

	// Records of forwarded spillover requests without a client key,
	// appended after the answer (spillover.go); Shutdown waits for them.
	records     sync.WaitGroup
	recordSlots chan struct{}

	fullWait  time.Duration   // log protocols: how long a request waits for room when full (logs.go)
	waitCtx   context.Context // cancelled when Shutdown begins: ends those waits
	stopWaits context.CancelFunc
}

type route struct {
	policies.Route
	queue    store.Queue                    // buffer and spillover modes
	upstream *fasthttp.HostClient           // passthrough mode
	limiter  *rate.Limiter                  // passthrough with a finite rate
	direct   atomic.Pointer[directTarget]   // spillover: set by SetDirect
	est      []atomic.Pointer[estimatorBox] // per target: set by SetEstimator
	etaCache atomic.Pointer[etaCache]       // the last estimates for a new message (newETAs)
	hecAcks  *hecAcks                       // protocol splunk-hec: indexer acknowledgement (hec.go)
}

// New builds the server. It does not listen; call Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Policy == nil {
		return nil, errors.New("proxy: Config.Policy is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, fullWait: fullWait}
	s.waitCtx, s.stopWaits = context.WithCancel(context.Background())
	s.appendCtx, s.stop = context.WithCancel(context.Background())
	s.recordSlots = make(chan struct{}, maxRecordsInFlight)
	routes, maxBody, err := s.buildRoutes(cfg.Policy, cfg.Queues, nil)
	if err != nil {
		return nil, err
	}
	s.table.Store(&routeTable{routes: routes})
	if u := cfg.Policy.DefaultUpstream; u != nil {
		s.fallback = &route{
			Route:    policies.Route{Name: "default_upstream", Mode: policies.ModePassthrough, MaxBody: policies.DefaultPassthroughMaxBody, Upstream: u, Timeout: policies.DefaultUpstreamTimeout},
			upstream: newUpstream(u, policies.DefaultUpstreamTimeout),
		}
		maxBody = max(maxBody, policies.DefaultPassthroughMaxBody)
	}
	sv := withServerDefaults(cfg.Policy.Server)
	if sv.TLS != nil {
		cert, err := tls.LoadX509KeyPair(sv.TLS.Cert, sv.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("server.tls: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		ErrorHandler:       s.handleError,
		HeaderReceived:     s.headerReceived,
		Name:               "sluice",
		MaxRequestBodySize: bodyLimitInt(maxBody),
		ReadBufferSize:     int(sv.MaxHeaderBytes), // also the limit on request line + headers
		ReadTimeout:        sv.ReadTimeout,         // an absolute deadline per request: a slow sender gains nothing (a streamed upload: see upload)
		WriteTimeout:       sv.WriteTimeout,
		IdleTimeout:        sv.IdleTimeout,
		// limitListener answers the connections beyond max_connections
		// (with a JSON 503); fasthttp's own limit, with its text/plain
		// answer, is left a margin for connections closing while new ones
		// are accepted, so that it never answers first.
		Concurrency:           sv.MaxConnections + concurrencyMargin,
		NoDefaultServerHeader: false,
		CloseOnShutdown:       true,
		Logger:                fasthttpLogger{s.log},
		SecureErrorLogMessage: true, // fasthttp's errors quote no request bytes

		// Request bodies are streamed when some route passes requests
		// through, so that it can forward uploads as they arrive; buffer and
		// spillover routes read theirs whole with readBody (reqbody.go
		// explains the design). Streaming costs a buffered 1 KiB request
		// +1.6 µs of CPU: the median difference of 16 alternating rounds
		// (range -5.2 to +9.4 µs, the noise of a loaded 2-vCPU machine), of
		// 44-63 µs a request for the server and its clients together
		// (BenchmarkStreamRequestBody, 2026-12-05; its comment has the
		// command). So a policy without passthrough routes does not pay it:
		// fasthttp reads bodies whole, within max_body, before the handler.
		// Multipart bodies are not parsed: fasthttp would read them whole
		// (files to temporary files) before the handler, and with no size
		// limit.
		StreamRequestBody:            s.passesThrough(),
		DisablePreParseMultipartForm: true,
	}
	s.maxHeader = sv.MaxHeaderBytes
	s.maxConns = sv.MaxConnections
	s.readTimeout = sv.ReadTimeout
	s.eventLoops = sv.EventLoops
	s.tooLargeToken = newToken()
	return s, nil
}

// routeTable is the routes in force. A request uses the table it loaded
// first to the end, so a swap (SetRoutes) never shows it half of each.
type routeTable struct {
	routes  []*route // in the policy's order: the first match wins
	retired []*route // buffer and spillover routes removed by SetRoutes: status lookups only
}

// buildRoutes builds the routes of pol; each buffer and spillover route
// takes its queue from queues. A target of old (the routes in force) keeps
// its estimator and a spillover route its direct target, so estimates do
// not fall back to the policy while the caller re-connects them.
func (s *Server) buildRoutes(pol *policies.Policy, queues map[string]store.Queue, old []*route) ([]*route, int64, error) {
	var maxBody int64
	var routes []*route
	for _, pr := range pol.Routes {
		r := &route{Route: pr}
		switch pr.Mode {
		case policies.ModeBuffer, policies.ModeSpillover:
			q := queues[pr.Name]
			if q == nil {
				return nil, 0, fmt.Errorf("route %q: no queue in Config.Queues", pr.Name)
			}
			r.queue = q
			r.est = make([]atomic.Pointer[estimatorBox], len(pr.Targets))
			for _, o := range old {
				if o.Name != pr.Name || o.queue == nil {
					continue
				}
				for i, t := range pr.Targets {
					for j, ot := range o.Targets {
						if ot.Name == t.Name && j < len(o.est) {
							r.est[i].Store(o.est[j].Load())
						}
					}
				}
				r.direct.Store(o.direct.Load())
				r.hecAcks = o.hecAcks // a reload keeps the channels' acks
			}
			if pr.Protocol == policies.ProtocolSplunkHEC && r.hecAcks == nil {
				r.hecAcks = newHECAcks()
			}
		case policies.ModePassthrough:
			r.upstream = newUpstream(pr.Upstream, pr.Timeout)
			r.limiter = newLimiter(pr.Rate, pr.Burst)
		default:
			return nil, 0, fmt.Errorf("route %q: mode %q is not supported", pr.Name, pr.Mode)
		}
		maxBody = max(maxBody, pr.MaxBody)
		routes = append(routes, r)
	}
	return routes, maxBody, nil
}

// SetRoutes replaces the routes in force with those of pol, atomically: a
// request is matched against the old routes or the new ones, never refused
// for the swap. queues holds the queue of every buffer and spillover route
// of pol (as Config.Queues). Only routes change: the listener's settings
// (listen, server, storage, default_upstream) stay as New set them. A
// buffer or spillover route that pol no longer has stops matching (404
// no_route); its messages keep their status. The caller checks that the
// change is one a running server can make (a queue keeps its targets).
func (s *Server) SetRoutes(pol *policies.Policy, queues map[string]store.Queue) error {
	cur := s.table.Load()
	routes, _, err := s.buildRoutes(pol, queues, cur.routes)
	if err != nil {
		return err
	}
	next := &routeTable{routes: routes}
	kept := map[string]bool{}
	for _, r := range routes {
		kept[r.Name] = true
	}
	for _, r := range append(append([]*route(nil), cur.routes...), cur.retired...) {
		if r.queue != nil && !kept[r.Name] {
			next.retired = append(next.retired, r)
			kept[r.Name] = true
		}
	}
	s.table.Store(next)
	return nil
}

// routes returns the routes in force.
func (s *Server) routes() []*route { return s.table.Load().routes }

// passesThrough reports whether some request may be passed through (a
// passthrough route or a default upstream): only then are bodies streamed.
func (s *Server) passesThrough() bool {
	if s.fallback != nil {
		return true
	}
	for _, r := range s.routes() {
		if r.Mode == policies.ModePassthrough {
			return true
		}
	}
	return false
}

// storesOnLoop reports whether the event loops may store the requests of
// route r themselves (evstore_linux.go): a buffer route of the http
// protocol whose queue appends many drafts in one commit.
func storesOnLoop(r *route) bool {
	if r.Mode != policies.ModeBuffer || (r.Protocol != "" && r.Protocol != policies.ProtocolHTTP) {
		return false
	}
	_, ok := r.queue.(store.BatchAppender)
	return ok
}

// loopsServe reports whether the event loops have requests of this policy
// to serve themselves: passthrough requests (passesThrough) or buffered
// ones (storesOnLoop). Without either they would only hand connections over.
func (s *Server) loopsServe() bool {
	return s.passesThrough() || s.storesOnLoops()
}

// storesOnLoops reports whether any route of the policy is stored on the
// event loops (storesOnLoop).
func (s *Server) storesOnLoops() bool {
	for _, r := range s.routes() {
		if storesOnLoop(r) {
			return true
		}
	}
	return false
}

// Serve accepts connections on ln until Shutdown, with TLS if the policy's
// server.tls names a certificate.
//
// Plain-HTTP connections are accepted by the event loops (server.event_loops,
// evloop_linux.go) where the system has them: passthrough requests are
// relayed there, buffer-route requests stored (evstore_linux.go), and every
// other connection is handed to the fasthttp server.
func (s *Server) Serve(ln net.Listener) error {
	lim := &limitListener{Listener: ln, max: int64(s.maxConns), tls: s.tls}
	if s.tls == nil && s.loopsServe() {
		if e := newEngine(s, ln, lim, s.eventLoops); e != nil {
			s.engine.Store(e)
			served := make(chan error, 1)
			go func() { served <- s.srv.Serve(e.hand) }()
			err := e.serve()
			if err != nil {
				e.hand.Close()
			}
			if serr := <-served; err == nil {
				err = serr
			}
			return err
		}
	}
	return s.srv.Serve(lim)
}

// Shutdown stops accepting and waits for requests in progress (each of which
// either got its acknowledgement after a durable commit, or an error).
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopWaits() // log requests waiting for room are refused now (logs.go)
	var eerr error
	if e := s.engine.Load(); e != nil {
		eerr = e.shutdown(ctx)
	}
	err := s.srv.ShutdownWithContext(ctx)
	if err == nil {
		err = eerr
	}
	recorded := make(chan struct{})
	go func() { s.records.Wait(); close(recorded) }()
	select { // the records of forwarded requests (spillover.go)
	case <-recorded:
	case <-ctx.Done():
	}
	s.stop()
	return err
}

// Handler returns the request handler, for tests that serve it themselves.
func (s *Server) Handler() fasthttp.RequestHandler { return s.handle }

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	if s.refusedBody(ctx) { // Content-Length over max_body: 413, nothing read
		return
	}
	if !s.originForm(ctx) {
		return
	}
	// The one form of the path that is routed, stored and forwarded (path.go).
	uri, ok := normalizeURI(ctx.Request.Header.RequestURI())
	if !ok {
		writeError(ctx, fasthttp.StatusBadRequest, "bad_request",
			"the request's path has a malformed percent-encoding (% must be followed by two hex digits); nothing was stored or forwarded")
		return
	}
	path := pathPart(uri)
	if strings.HasPrefix(string(path), StatusPrefix) {
		s.handleStatus(ctx, path)
		return
	}
	r, allowed := s.match(ctx.Method(), requestHost(&ctx.Request.Header), path)
	if r == nil && allowed == nil {
		r = s.fallback // default_upstream, if any
	}
	if r == nil {
		if allowed != nil {
			ctx.Response.Header.Set("Allow", strings.Join(allowed, ", "))
			writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed",
				"the request's method is not allowed on this path; allowed: "+strings.Join(allowed, ", "))
			return
		}
		writeError(ctx, fasthttp.StatusNotFound, "no_route", "no route matches the request's path and method")
		return
	}
	switch r.Mode {
	case policies.ModeBuffer:
		if r.Protocol != "" && r.Protocol != policies.ProtocolHTTP {
			start := time.Now()
			ctx.SetUserValue(logURIKey, uri) // the normalised form, routed and stored (logs.go)
			s.handleLogs(ctx, r)             // reads the body itself: not every call has one
			s.observe(ctx, r, start)
		} else if s.readBody(ctx, r.MaxBody) {
			start := time.Now()
			s.handleBuffer(ctx, r, uri)
			s.observe(ctx, r, start)
		}
	case policies.ModePassthrough:
		s.handlePassthrough(ctx, r, uri) // streams a large body
	case policies.ModeSpillover:
		if s.readBody(ctx, r.MaxBody) {
			start := time.Now()
			s.handleSpillover(ctx, r, uri)
			s.observe(ctx, r, start)
		}
	}
}

func (s *Server) observe(ctx *fasthttp.RequestCtx, r *route, start time.Time) {
	if s.cfg.Observer == nil {
		return
	}
	code, _ := ctx.UserValue(errCodeKey).(string)
	s.cfg.Observer.Observe(r.Name, ctx.Response.StatusCode(), code, time.Since(start))
}

// headerReceived applies the matched route's body limit before the body is
// read: a Content-Length over it is refused (413) without reading any of the
// body (refuseBody); a chunked body is held to it as it is read.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	uri, _ := normalizeURI(h.RequestURI()) // as handle will route it
	r, _ := s.match(h.Method(), requestHost(h), pathPart(uri))
	if r == nil {
		r = s.fallback
	}
	limit := int64(noRouteMaxBody)
	if r != nil {
		limit = r.MaxBody
	}
	if int64(h.ContentLength()) > limit {
		s.refuseBody(h)
	}
	return fasthttp.RequestConfig{MaxRequestBodySize: bodyLimitInt(limit)}
}

// draftBuf is a pooled Draft with room for the X-Forwarded-For value it
// refers to (on the stack, that room would move to the heap), and what
// prepareBuffer found for answerBuffer: the clock and the estimates.
type draftBuf struct {
	d      store.Draft
	fwd    [64]byte
	now    time.Time
	etas   []targetETA
	etaBuf [maxTargetsInline]targetETA
}

var draftPool = sync.Pool{New: func() any { return new(draftBuf) }}

// reset clears db for reuse, keeping its buffers.
func (db *draftBuf) reset() {
	db.d.Reset()
	clear(db.etaBuf[:])
	db.etas, db.now = nil, time.Time{}
}

// handleBuffer stores a request of route r whose request-URI, normalised, is uri.
func (s *Server) handleBuffer(ctx *fasthttp.RequestCtx, r *route, uri []byte) {
	db := draftPool.Get().(*draftBuf)
	defer func() { db.reset(); draftPool.Put(db) }()
	if !s.prepareBuffer(ctx, r, uri, db) {
		return
	}
	// The context bounds only the hand-off to the writer (which blocks only
	// when it is far behind); once handed over, the outcome is awaited, since
	// the record may be committed.
	id, err := r.queue.AppendDraft(s.appendCtx, &db.d)
	s.answerBuffer(ctx, r, db, id, err)
}

// prepareBuffer is the part of storing a request of buffer route r (its
// normalised request-URI uri) that comes before the append, on both paths
// (handleBuffer; the event loops, evstore_linux.go): it checks the body
// against max_body, the callback URL against callbacks.allow and the
// estimates against max_wait, and fills db's draft with what is stored. It
// returns false once it has answered a refusal: nothing is to be stored.
// The draft refers to ctx's bytes: they must stay valid until the append
// returned.
func (s *Server) prepareBuffer(ctx *fasthttp.RequestCtx, r *route, uri []byte, db *draftBuf) bool {
	body := ctx.PostBody()
	if int64(len(body)) > r.MaxBody {
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("body of %d bytes exceeds max_body %d of route %q", len(body), r.MaxBody, r.Name))
		return false
	}
	if !checkCallback(ctx, r) {
		return false
	}
	now := time.Now()
	etas := r.newETAs(db.etaBuf[:0], now)
	if overMaxWait(ctx, r, etas, now) {
		return false
	}
	db.now, db.etas = now, etas
	d := &db.d
	d.Method = ctx.Method()
	d.URI = uri
	d.Body = body
	d.EnqueuedAt = now // the estimates' clock; one clock read a request is ~0.1-0.2 µs on a VM
	addStoredHeaders(ctx, d, db.fwd[:0])
	if r.IdempotencyHeader != "" {
		d.IdempotencyKey = ctx.Request.Header.Peek(r.IdempotencyHeader)
	}
	if k, ok := ctx.UserValue(spillKey).([]byte); ok && len(d.IdempotencyKey) == 0 {
		d.IdempotencyKey = k // spillover: the key its failed direct attempt was sent with
	}
	return true
}

// answerBuffer answers a request that prepareBuffer prepared in db, once
// its append returned id and err: 202 only if err is nil, i.e. the draft is
// durable (or a duplicate of a message that is); a refusal otherwise.
func (s *Server) answerBuffer(ctx *fasthttp.RequestCtx, r *route, db *draftBuf, id store.ID, err error) {
	if err != nil {
		s.refuse(ctx, r, err)
		return
	}
	if db.d.Duplicate {
		// The key was seen on this route: the first message's id, nothing
		// stored; the status and estimates are the first message's.
		ctx.Response.Header.Set("X-Sluice-Duplicate", "true")
		etas := r.storedETAs(db.etas[:0], id, db.now)
		writeAccepted(ctx, id, repeatStatus(etas), etas)
		return
	}
	writeAccepted(ctx, id, string(store.Queued), db.etas)
}

// refuse answers a request that could not be stored. It is never 202.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, r *route, err error) {
	switch {
	case errors.Is(err, store.ErrFull):
		wait := setRetryAfter(ctx, err)
		writeError(ctx, fasthttp.StatusServiceUnavailable, "storage_full",
			err.Error()+"; nothing was stored, retry after "+wait.String())
	case errors.Is(err, syscall.ENOSPC):
		// The disk filled before admission control saw it coming.
		ctx.Response.Header.Set("Retry-After", "5")
		writeError(ctx, fasthttp.StatusServiceUnavailable, "storage_full",
			"the disk is full; nothing was stored, retry after 5s")
	case errors.Is(err, store.ErrKeyMismatch):
		writeError(ctx, fasthttp.StatusUnprocessableEntity, "idempotency_key_reused",
			"the "+r.IdempotencyHeader+" was used before on this route for a different request (another method, path, query or body); nothing was stored: send a new key for a new request, or repeat the first request exactly")
	case errors.Is(err, store.ErrTooLarge):
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large", err.Error())
	case errors.Is(err, store.ErrClosed):
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, fasthttp.StatusServiceUnavailable, "shutting_down", "sluice is shutting down; the request was not stored")
	case errors.Is(err, context.DeadlineExceeded):
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, fasthttp.StatusServiceUnavailable, "storage_slow", "the request could not be stored in time; it was not accepted")
	default:
		s.log.Error("append failed", "route", r.Name, "err", err)
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, fasthttp.StatusServiceUnavailable, "storage_error", "the request could not be stored; it was not accepted")
	}
}

// handleError answers a request fasthttp could not read. The answer never
// quotes the request (fasthttp's errors carry a snippet of it, headers such
// as Authorization included): it names what is wrong in words of its own.
func (s *Server) handleError(ctx *fasthttp.RequestCtx, err error) {
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		h := &ctx.Request.Header
		if r, _ := s.match(h.Method(), requestHost(h), pathOf(h.RequestURI())); r != nil && s.logTooLarge(ctx, r) {
			return // answered in the route's log protocol's shape
		}
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large", "request body exceeds the route's max_body")
	case errors.As(err, new(*fasthttp.ErrSmallBuffer)):
		writeError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, "headers_too_large",
			fmt.Sprintf("request line and headers exceed %d bytes (server.max_header_bytes)", s.maxHeader))
	case errors.Is(err, errBareLF):
		writeError(ctx, fasthttp.StatusBadRequest, "bad_request",
			"the request line ends in a bare LF; HTTP/1.1 lines end in CRLF (RFC 9112 section 2.2); nothing was stored or forwarded")
		ctx.SetConnectionClose()
	default:
		var te interface{ Timeout() bool }
		if errors.As(err, &te) && te.Timeout() {
			writeError(ctx, fasthttp.StatusRequestTimeout, "timeout", "request not received in time")
			return
		}
		writeError(ctx, fasthttp.StatusBadRequest, "bad_request",
			"malformed request: its request line, headers or body framing (Content-Length, chunked encoding) could not be parsed; nothing was stored or forwarded")
	}
}

// clientErrorKind names, for a log line, what went wrong reading a request,
// without the error's text (fasthttp quotes the request in some errors).
func clientErrorKind(err error) string {
	var te interface{ Timeout() bool }
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return "body too large"
	case errors.As(err, &te) && te.Timeout():
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "body cut short"
	}
	return "malformed"
}

// fasthttpLogger routes fasthttp's own messages to slog, at debug level,
// without their string and error arguments: fasthttp formats a snippet of
// the request (headers such as Authorization included) into its errors.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	if !f.l.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	safe := make([]any, len(args))
	for i, a := range args {
		switch a.(type) {
		case net.Addr, int, int64, uint64, time.Duration:
			safe[i] = a
		default:
			safe[i] = "[omitted]"
		}
	}
	f.l.Debug(fmt.Sprintf(format, safe...), "component", "fasthttp")
}
