package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sync/semaphore"

	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// A route with a log protocol (routes[].protocol) stores one message per
// document and answers in the protocol's own shape, only once every document
// of the request is durable. The codecs are logproto's; this file joins them
// to the queue and the listener.
//
// Back-pressure and bad payloads, per protocol (README, "Log protocols"):
//   - elasticsearch: storage full or slow -> 429 es_rejected_execution_exception
//     with Retry-After (what Elasticsearch answers under load; Filebeat,
//     Logstash and Fluent Bit retry it, rsyslog with action.resumeRetryCount
//     -1); a malformed request -> 400 with an Elasticsearch error body, nothing
//     stored (what Elasticsearch answers to a malformed _bulk).
//   - ndjson: storage full -> 503 with Retry-After; a line that is not JSON ->
//     422 (syslog-ng's http() drops a 422 but retries a 400 forever).
//   - loki: storage full -> 429 with Retry-After (Loki's rate-limit answer,
//     which Promtail, Alloy and Fluent Bit retry); malformed -> 400 with a
//     plain-text reason, nothing stored.
//   - otlp: storage full -> 503 with Retry-After and a google.rpc.Status
//     (UNAVAILABLE) in the request's encoding, which OTLP exporters retry;
//     malformed -> 400 INVALID_ARGUMENT, nothing stored.
//   - splunk-hec: storage full -> 503 {"text":"Server is busy","code":9} with
//     Retry-After (Splunk's own answer); a malformed event -> 400 with HEC's
//     code and invalid-event-number, nothing stored.
//
// A route's max_wait refuses a request whose documents would wait past it
// with the same answer as storage full (logBacklog), its reason in the
// protocol's error text where the shape has one; nothing is stored.
//
// A request's documents go to the store in chunks of up to 4096 with
// store.BatchAppender, each chunk all or nothing (one write, one fsync). A
// request of more than 4096 documents, or a store without batch append
// (each document appended on its own, all at once), can end with some
// documents stored and others not (a disk error, shutdown): an
// Elasticsearch reply then says so item by item (201 for the stored ones,
// 429 for the others, which the shipper resends alone); the other
// protocols answer an error, and the client's resend duplicates the
// documents that were stored.
//
// Costs, per document (bench/logs): one validation (fastjson), one draft
// from a pooled chunk that shares the header fields its request's
// documents have alike (store.SharedHeaders, encoded once per request and
// operation) and adds its metadata and _id, one record encoding (~280
// bytes stored for a 200-byte document); the reply's items and ids are
// built in pooled buffers and the reply in the response's own.

// logDraftPool holds drafts for documents, one at a time (a queue without
// batch append); draftChunkPool holds them by the chunk, with their record
// buffers, so that a chunk of documents takes one pool round trip.
var (
	logDraftPool   = sync.Pool{New: func() any { return new(store.Draft) }}
	draftChunkPool = sync.Pool{New: func() any { return new(draftChunk) }}
)

type draftChunk struct{ ds []*store.Draft }

// get returns n reset drafts.
func (c *draftChunk) get(n int) []*store.Draft {
	for len(c.ds) < n {
		c.ds = append(c.ds, new(store.Draft))
	}
	return c.ds[:n]
}

var (
	hdrContentType = []byte("Content-Type")
	valueJSON      = []byte("application/json")
	hdrProtocol    = []byte(logproto.HeaderProtocol)
	hdrEsOp        = []byte(logproto.HeaderOp)
	hdrEsMeta      = []byte(logproto.HeaderMeta)
	hdrEsID        = []byte(logproto.HeaderID)
)

// logURIKey holds, as a request's user value, the normalised request-URI
// that handle routed (path.go): the log handlers route on its path and store
// it, as buffered requests do.
const logURIKey = "sluice.logURI"

func logURI(ctx *fasthttp.RequestCtx) []byte {
	if u, ok := ctx.UserValue(logURIKey).([]byte); ok {
		return u
	}
	return ctx.URI().RequestURI() // a caller that did not set it (a test's own handler)
}

// handleLogs serves a buffer route whose protocol is not http.
func (s *Server) handleLogs(ctx *fasthttp.RequestCtx, r *route) {
	switch r.Protocol {
	case policies.ProtocolElasticsearch:
		s.handleElasticsearch(ctx, r)
	case policies.ProtocolNDJSON:
		s.handleNDJSON(ctx, r)
	case policies.ProtocolSplunkHEC:
		s.handleSplunkHEC(ctx, r)
	case policies.ProtocolLoki:
		s.handleLoki(ctx, r)
	case policies.ProtocolOTLP:
		s.handleOTLP(ctx, r)
	}
}

// gRPC status codes OTLP/HTTP answers with.
const (
	rpcInvalidArgument = 3
	rpcUnavailable     = 14
	rpcUnimplemented   = 12
)

// handleOTLP serves OTLP/HTTP logs (POST /v1/logs, protobuf or JSON):
// each log record is stored as one message holding it with its resource and
// scope, and the export is answered 200 with an empty
// ExportLogsServiceResponse in the request's encoding once all are durable.
func (s *Server) handleOTLP(ctx *fasthttp.RequestCtx, r *route) {
	enc := logproto.OTLPEncoding(string(ctx.Request.Header.ContentType()))
	status := func(status, code int, msg string) { writeOTLPStatus(ctx, enc, status, code, msg) }
	path := string(pathPart(logURI(ctx)))
	if path != logproto.OTLPLogsPath {
		path = routePath(pathPart(logURI(ctx)), r.Match.Path)
	}
	switch {
	case path != logproto.OTLPLogsPath:
		status(fasthttp.StatusNotFound, rpcUnimplemented, "sluice accepts OTLP logs only, on "+logproto.OTLPLogsPath)
		return
	case !ctx.IsPost():
		ctx.Response.Header.Set("Allow", "POST")
		status(fasthttp.StatusMethodNotAllowed, rpcUnimplemented, "use POST")
		return
	case enc == "":
		status(fasthttp.StatusUnsupportedMediaType, rpcInvalidArgument, "Content-Type must be application/x-protobuf or application/json")
		return
	}
	if !s.readBody(ctx, r.MaxBody) {
		return
	}
	body, perr := decodeBody(ctx, r)
	if perr != nil {
		status(perr.Status, rpcInvalidArgument, perr.Reason)
		return
	}
	docs, err := logproto.ParseOTLPLogsLimit(body, enc, logproto.MaxExpansion*r.MaxBody)
	if errors.Is(err, logproto.ErrTooLarge) {
		status(fasthttp.StatusRequestEntityTooLarge, rpcInvalidArgument, fmt.Sprintf(
			"split into one export per record, the request would take more than %d times max_body %d of route %q; nothing was stored", logproto.MaxExpansion, r.MaxBody, r.Name))
		return
	}
	if err != nil {
		pe := asProtoError(err)
		status(pe.Status, rpcInvalidArgument, pe.Reason)
		return
	}
	if msg, over := s.logBacklog(ctx, r); over {
		status(fasthttp.StatusServiceUnavailable, rpcUnavailable, msg)
		return
	}
	_, errs := s.appendDocsAs(ctx, r, docs, []byte(enc), nil)
	failed, firstErr := countFailed(errs)
	if failed > 0 {
		// A retryable answer with Retry-After, which OTLP exporters honour.
		// A resend stores again the records that were stored (see the top).
		s.logRefusal(r, firstErr, failed)
		setRetryAfter(ctx, firstErr)
		status(fasthttp.StatusServiceUnavailable, rpcUnavailable,
			fmt.Sprintf("%d of %d log records were not stored (%s); export them again", failed, len(docs), refusalReason(firstErr)))
		return
	}
	ctx.Response.Header.SetContentType(enc)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetBody(logproto.OTLPSuccess(enc))
}

// writeOTLPStatus answers status with a google.rpc.Status of code and msg
// in encoding enc, or in JSON when the request named neither encoding.
func writeOTLPStatus(ctx *fasthttp.RequestCtx, enc string, status, code int, msg string) {
	if enc == "" {
		enc = logproto.OTLPJSON
	}
	ctx.Response.Header.SetContentType(enc)
	ctx.SetStatusCode(status)
	ctx.SetBody(logproto.OTLPStatus(enc, code, msg))
}

func writeText(ctx *fasthttp.RequestCtx, status int, text string) {
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.SetStatusCode(status)
	ctx.SetBodyString(text + "\n")
}

// handleLoki serves Loki's push API: each entry is stored as one message
// with its stream's labels, and the push is answered 204 once all are
// durable. GET /ready is answered.
func (s *Server) handleLoki(ctx *fasthttp.RequestCtx, r *route) {
	path := string(pathPart(logURI(ctx)))
	if path != logproto.LokiPushPath {
		path = routePath(pathPart(logURI(ctx)), r.Match.Path)
	}
	switch {
	case path == "/ready" && (ctx.IsGet() || ctx.IsHead()):
		writeText(ctx, fasthttp.StatusOK, "ready")
		return
	case path != logproto.LokiPushPath:
		writeText(ctx, fasthttp.StatusNotFound, "404 page not found")
		return
	case !ctx.IsPost():
		ctx.Response.Header.Set("Allow", "POST")
		writeText(ctx, fasthttp.StatusMethodNotAllowed, "use POST")
		return
	}
	if !s.readBody(ctx, r.MaxBody) {
		return
	}
	body, perr := decodeBody(ctx, r)
	if perr == nil {
		var docs []logproto.Doc
		docs, err := logproto.ParseLoki(body, string(ctx.Request.Header.ContentType()), r.MaxBody)
		if errors.Is(err, logproto.ErrTooLarge) {
			perr = &logproto.Error{Status: fasthttp.StatusRequestEntityTooLarge, Reason: fmt.Sprintf("the decoded body exceeds max_body %d of route %q; nothing was stored", r.MaxBody, r.Name)}
		} else if err != nil {
			perr = asProtoError(err)
		} else {
			s.lokiAppend(ctx, r, docs)
			return
		}
	}
	writeText(ctx, perr.Status, perr.Reason)
}

func (s *Server) lokiAppend(ctx *fasthttp.RequestCtx, r *route, docs []logproto.Doc) {
	if msg, over := s.logBacklog(ctx, r); over {
		writeText(ctx, fasthttp.StatusTooManyRequests, msg)
		return
	}
	_, errs := s.appendDocs(ctx, r, docs)
	failed, firstErr := countFailed(errs)
	if failed > 0 {
		// Loki's own back-pressure answer; its clients retry it. A resend
		// stores again the entries that were stored (see the top).
		s.logRefusal(r, firstErr, failed)
		setRetryAfter(ctx, firstErr)
		writeText(ctx, fasthttp.StatusTooManyRequests, fmt.Sprintf("%d of %d entries were not stored (%s); send the push again", failed, len(docs), refusalReason(firstErr)))
		return
	}
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}

// logTooLarge answers 413 for a body over a log route's max_body in the
// route's protocol's own error shape, and reports whether it did (false for
// routes of protocol http, and ndjson, whose shape is sluice's own).
func (s *Server) logTooLarge(ctx *fasthttp.RequestCtx, r *route) bool {
	const status = fasthttp.StatusRequestEntityTooLarge
	reason := fmt.Sprintf("the body exceeds max_body %d of route %q; nothing was stored", r.MaxBody, r.Name)
	switch r.Protocol {
	case policies.ProtocolElasticsearch:
		ctx.Response.Header.Set(logproto.ProductHeader, logproto.ProductValue)
		writeESError(ctx, &logproto.Error{Status: status, Type: "content_too_long_exception", Reason: reason})
	case policies.ProtocolSplunkHEC:
		writeHEC(ctx, status, logproto.HECReply(reason, logproto.HECInvalidFormat, -1))
	case policies.ProtocolLoki:
		writeText(ctx, status, reason)
	case policies.ProtocolOTLP:
		writeOTLPStatus(ctx, logproto.OTLPEncoding(string(ctx.Request.Header.ContentType())), status, rpcInvalidArgument, reason)
	default:
		return false
	}
	return true
}

func writeHEC(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(body)
}

// handleSplunkHEC serves Splunk's HTTP Event Collector: event and raw
// calls are stored one message per event and answered
// {"text":"Success","code":0} (with an ackId when the call names a
// channel) once all are durable; the health and ack calls are answered.
// Tokens are checked against hec_tokens if set, and never stored (hec.go).
func (s *Server) handleSplunkHEC(ctx *fasthttp.RequestCtx, r *route) {
	// HEC's paths are absolute (/services/collector/...); a route under
	// another prefix serves them below it.
	ep := logproto.HECEndpoint(string(pathPart(logURI(ctx))))
	if ep == "" {
		ep = logproto.HECEndpoint(routePath(pathPart(logURI(ctx)), r.Match.Path))
	}
	switch {
	case ep == "":
		writeHEC(ctx, fasthttp.StatusNotFound, logproto.HECReply("The requested URL was not found on this server.", 404, -1))
		return
	case ep == "health":
		writeHEC(ctx, fasthttp.StatusOK, logproto.HECReply("HEC is healthy", logproto.HECHealthy, -1))
		return
	case !hecAuthorized(ctx, r):
		return
	case !ctx.IsPost():
		ctx.Response.Header.Set("Allow", "POST")
		writeHEC(ctx, fasthttp.StatusMethodNotAllowed, logproto.HECReply("Method not allowed; use POST", logproto.HECInvalidFormat, -1))
		return
	}
	channel := hecChannel(ctx)
	switch {
	case len(channel) > hecMaxChannelLen:
		writeHEC(ctx, fasthttp.StatusBadRequest, logproto.HECReply("Invalid data channel", logproto.HECInvalidChannel, -1))
		return
	case ep == "ack" && len(channel) == 0:
		writeHEC(ctx, fasthttp.StatusBadRequest, logproto.HECReply("Data channel is missing", logproto.HECChannelMissing, -1))
		return
	}
	if !s.readBody(ctx, r.MaxBody) {
		return
	}
	body, perr := decodeBody(ctx, r)
	if perr != nil {
		writeHEC(ctx, perr.Status, logproto.HECReply(perr.Reason, logproto.HECInvalidFormat, -1))
		return
	}
	if ep == "ack" {
		ids, err := logproto.ParseHECAcks(body, hecMaxAcks)
		if err != nil {
			he := err.(*logproto.HECError)
			writeHEC(ctx, he.Status, he.Body())
			return
		}
		writeHEC(ctx, fasthttp.StatusOK, logproto.AppendHECAckReply(nil, ids, r.hecAcks.done(channel, ids)))
		return
	}
	var docs []logproto.Doc
	var err error
	if ep == "raw" {
		meta := map[string]string{}
		for _, k := range []string{"host", "index", "source", "sourcetype"} {
			if v := ctx.QueryArgs().Peek(k); len(v) > 0 {
				meta[k] = string(v)
			}
		}
		docs, err = logproto.ParseHECRaw(body, meta)
	} else {
		docs, err = logproto.ParseHEC(body)
	}
	if errors.Is(err, logproto.ErrTooLarge) {
		writeHEC(ctx, fasthttp.StatusRequestEntityTooLarge, logproto.HECReply("the events with the query's metadata would take too much memory; nothing was stored", logproto.HECInvalidFormat, -1))
		return
	}
	if err != nil {
		var he *logproto.HECError
		if errors.As(err, &he) {
			writeHEC(ctx, he.Status, he.Body())
		} else {
			writeHEC(ctx, fasthttp.StatusBadRequest, logproto.HECReply("Invalid data format", logproto.HECInvalidFormat, -1))
		}
		return
	}
	if u := logURI(ctx); bytes.IndexByte(u, '?') >= 0 {
		ctx.SetUserValue(logURIKey, withoutToken(u)) // a token is never stored (hec.go)
	}
	if _, over := s.logBacklog(ctx, r); over {
		// Splunk's own answer when it cannot take more; its clients key on
		// the code, so the text stays Splunk's.
		writeHEC(ctx, fasthttp.StatusServiceUnavailable, logproto.HECReply("Server is busy", logproto.HECServerBusy, -1))
		return
	}
	_, errs := s.appendDocs(ctx, r, docs)
	failed, firstErr := countFailed(errs)
	if failed > 0 {
		// Splunk's own answer when its queues are full; a resend stores
		// again the events that were stored (see the top of this file).
		s.logRefusal(r, firstErr, failed)
		setRetryAfter(ctx, firstErr)
		writeHEC(ctx, fasthttp.StatusServiceUnavailable, logproto.HECReply("Server is busy", logproto.HECServerBusy, -1))
		return
	}
	if len(channel) > 0 {
		// Durable already: the ack is true as soon as it is issued.
		writeHEC(ctx, fasthttp.StatusOK, logproto.HECSuccessAck(r.hecAcks.issue(channel)))
		return
	}
	writeHEC(ctx, fasthttp.StatusOK, logproto.HECReply("Success", logproto.HECSuccess, -1))
}

// routePath returns the request path relative to the route's match path,
// starting with "/".
func routePath(path []byte, prefix string) string {
	p := string(path)
	if prefix == "/" || !strings.HasPrefix(p, prefix) {
		return p
	}
	rel := strings.TrimPrefix(p, strings.TrimSuffix(prefix, "/"))
	if !strings.HasPrefix(rel, "/") {
		rel = "/" + rel
	}
	return rel
}

func (s *Server) handleElasticsearch(ctx *fasthttp.RequestCtx, r *route) {
	ctx.Response.Header.Set(logproto.ProductHeader, logproto.ProductValue)
	method := string(ctx.Method())
	rel := routePath(pathPart(logURI(ctx)), r.Match.Path)
	index, bulk := logproto.BulkIndex(rel)
	if !bulk || (method != fasthttp.MethodPost && method != fasthttp.MethodPut) {
		status, body, _ := logproto.Probe(method, rel)
		ctx.Response.Header.SetContentType("application/json")
		ctx.SetStatusCode(status)
		ctx.SetBody(body)
		return
	}
	if !s.readBody(ctx, r.MaxBody) {
		return
	}
	body, perr := decodeBody(ctx, r)
	if perr != nil {
		writeESError(ctx, perr)
		return
	}
	q := ctx.QueryArgs()
	sc := esScratchPool.Get().(*esScratch)
	defer sc.put()
	docs, err := logproto.AppendBulk(sc.docs, body, logproto.BulkDefaults{Index: index,
		Pipeline: string(q.Peek("pipeline")), Routing: string(q.Peek("routing"))})
	if err != nil {
		writeESError(ctx, asProtoError(err))
		return
	}
	sc.docs = docs
	if msg, over := s.logBacklog(ctx, r); over {
		writeESError(ctx, &logproto.Error{Status: fasthttp.StatusTooManyRequests, Type: "es_rejected_execution_exception", Reason: msg})
		return
	}
	start := time.Now()
	// update and delete actions are answered as failed items and not
	// stored (logproto.OpUpdate says why); the others go to the store.
	keep, refused := docs, 0
	for i := range docs {
		if docs[i].Refused != "" {
			refused++
		}
	}
	if refused > 0 {
		keep = make([]logproto.Doc, 0, len(docs)-refused)
		for i := range docs {
			if docs[i].Refused == "" {
				keep = append(keep, docs[i])
			}
		}
	}
	keptIDs, keptErrs := s.appendDocsAs(ctx, r, keep, valueJSON, sc)
	ids, errs := keptIDs, keptErrs
	if refused > 0 { // spread back over docs; refused ones have no id or error
		ids, errs = make([]store.ID, len(docs)), make([]error, len(docs))
		k := 0
		for i := range docs {
			if docs[i].Refused == "" {
				ids[i], errs[i] = keptIDs[k], keptErrs[k]
				k++
			}
		}
	}
	items := sc.items[:0]
	if cap(items) < len(docs) {
		items = make([]logproto.ItemReply, 0, len(docs))
	}
	items = items[:len(docs)]
	sc.items = items
	// The message ids of the documents without their own, quoted (28
	// bytes each), in one buffer; items alias it, which stays right if it
	// grows (appends leave the old bytes as they were).
	idJSON := sc.idJSON[:0]
	defer func() { sc.idJSON = idJSON }()
	stored := 0
	var firstErr error
	for i := range docs {
		d := &docs[i]
		it := logproto.ItemReply{Op: d.Op, Index: d.Index, ID: d.ID}
		switch {
		case d.Refused != "":
			it.Status, it.Type, it.Reason = fasthttp.StatusBadRequest, logproto.RefusedType, d.Refused
			if it.ID == nil {
				it.ID = []byte("null")
			}
		case errs[i] == nil:
			stored++
			it.Status = fasthttp.StatusCreated
			if it.ID == nil {
				from := len(idJSON)
				idJSON = append(ids[i].AppendTo(append(idJSON, '"')), '"')
				it.ID = idJSON[from:len(idJSON):len(idJSON)]
			}
		default:
			if firstErr == nil {
				firstErr = errs[i]
			}
			it.Status = fasthttp.StatusTooManyRequests
			it.Type = "es_rejected_execution_exception"
			it.Reason = "sluice did not store this document (" + refusalReason(errs[i]) + "); send it again"
			if it.ID == nil {
				it.ID = []byte("null")
			}
		}
		items[i] = it
	}
	if stored == 0 && firstErr != nil {
		// Nothing stored: one error for the whole request, which every
		// shipper resends whole.
		setRetryAfter(ctx, firstErr)
		s.logRefusal(r, firstErr, len(keep))
		writeESError(ctx, &logproto.Error{Status: fasthttp.StatusTooManyRequests, Type: "es_rejected_execution_exception",
			Reason: "sluice stored none of the " + strconv.Itoa(len(keep)) + " documents (" + refusalReason(firstErr) + "); nothing was stored, send the request again"})
		return
	}
	if stored < len(keep) {
		s.logRefusal(r, firstErr, len(keep)-stored)
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(fasthttp.StatusOK)
	// Built in the response's own (pooled) body buffer.
	reply := ctx.Response.SwapBody(nil)
	ctx.Response.SwapBody(logproto.AppendBulkReply(reply[:0], time.Since(start), items))
}

// esScratch is what a _bulk request needs for its documents and its reply
// items, pooled: a 500-document request would otherwise allocate ~120 KB.
type esScratch struct {
	docs   []logproto.Doc
	items  []logproto.ItemReply
	idJSON []byte
	// appendDocsAs's
	ids  []store.ID
	errs []error
	todo []int
}

// appendSlices returns sc's ids, errors and todo list, n long and zero.
func (sc *esScratch) appendSlices(n int) ([]store.ID, []error, []int) {
	if cap(sc.ids) < n {
		sc.ids, sc.errs, sc.todo = make([]store.ID, n), make([]error, n), make([]int, n)
	}
	sc.ids, sc.errs, sc.todo = sc.ids[:n], sc.errs[:n], sc.todo[:n]
	clear(sc.ids)
	clear(sc.errs)
	return sc.ids, sc.errs, sc.todo
}

var esScratchPool = sync.Pool{New: func() any { return new(esScratch) }}

// put clears what refers to the request (its body) and returns sc to the
// pool, unless a huge request grew it.
func (sc *esScratch) put() {
	if cap(sc.docs) > 1<<16 {
		return
	}
	clear(sc.docs[:cap(sc.docs)])
	clear(sc.items[:cap(sc.items)])
	clear(sc.errs[:cap(sc.errs)])
	sc.docs, sc.items, sc.idJSON = sc.docs[:0], sc.items[:0], sc.idJSON[:0]
	esScratchPool.Put(sc)
}

func (s *Server) handleNDJSON(ctx *fasthttp.RequestCtx, r *route) {
	if !s.readBody(ctx, r.MaxBody) {
		return
	}
	body, perr := decodeBody(ctx, r)
	if perr != nil {
		writeProtoJSONError(ctx, perr)
		return
	}
	docs, err := logproto.ParseNDJSON(body)
	if err != nil {
		pe := asProtoError(err)
		if pe.Status == fasthttp.StatusBadRequest {
			pe.Status = fasthttp.StatusUnprocessableEntity // see the comment at the top
		}
		writeProtoJSONError(ctx, pe)
		return
	}
	if msg, over := s.logBacklog(ctx, r); over {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "backlog_too_long", msg)
		return
	}
	_, errs := s.appendDocs(ctx, r, docs)
	failed, firstErr := countFailed(errs)
	if failed > 0 {
		s.logRefusal(r, firstErr, failed)
		setRetryAfter(ctx, firstErr)
		msg := fmt.Sprintf("%d of %d documents could not be stored (%s)", failed, len(docs), refusalReason(firstErr))
		if failed < len(docs) {
			msg += "; the others were stored, and a resend stores them again"
		} else {
			msg += "; nothing was stored"
		}
		writeError(ctx, fasthttp.StatusServiceUnavailable, refusalCode(firstErr), msg)
		return
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetBody(strconv.AppendInt([]byte(`{"status":"queued","documents":`), int64(len(docs)), 10))
	ctx.Response.AppendBodyString("}\n")
}

// logBacklog applies the route's max_wait to a log request about to be
// stored: when some target's estimate for a new message is later than now
// + max_wait, it sets Retry-After and returns the reason, for the
// protocol's own back-pressure answer (the list at the top of this file);
// nothing is stored.
func (s *Server) logBacklog(ctx *fasthttp.RequestCtx, r *route) (string, bool) {
	if r.MaxWait <= 0 {
		return "", false
	}
	now := time.Now()
	var etaBuf [maxTargetsInline]targetETA
	b, over := backlogTooLong(r, r.newETAs(etaBuf[:0], now), now)
	if !over {
		return "", false
	}
	b.setRetryAfter(ctx)
	return b.msg, true
}

// decodeBody undoes the request's Content-Encoding within the route's
// max_body; a body that decodes larger is a 413.
func decodeBody(ctx *fasthttp.RequestCtx, r *route) ([]byte, *logproto.Error) {
	body, err := logproto.Decode(ctx.PostBody(), string(ctx.Request.Header.ContentEncoding()), r.MaxBody)
	if errors.Is(err, logproto.ErrTooLarge) {
		return nil, &logproto.Error{Status: fasthttp.StatusRequestEntityTooLarge, Type: "content_too_long_exception",
			Reason: fmt.Sprintf("the decoded body exceeds max_body %d of route %q; nothing was stored", r.MaxBody, r.Name)}
	}
	if err != nil {
		return nil, asProtoError(err)
	}
	return body, nil
}

func asProtoError(err error) *logproto.Error {
	var pe *logproto.Error
	if errors.As(err, &pe) {
		return pe
	}
	return &logproto.Error{Status: fasthttp.StatusBadRequest, Type: "bad_request", Reason: err.Error()}
}

// appendDocs stores each document as one message, all at once so that they
// share a group commit, and waits for all of them. errs[i] is nil for each
// document stored, whose id is ids[i].
func (s *Server) appendDocs(ctx *fasthttp.RequestCtx, r *route, docs []logproto.Doc) ([]store.ID, []error) {
	return s.appendDocsAs(ctx, r, docs, valueJSON, nil)
}

// appendDocsAs is appendDocs for documents of another Content-Type; with
// sc, the ids and errors are sc's (valid until it is put back), else new.
func (s *Server) appendDocsAs(ctx *fasthttp.RequestCtx, r *route, docs []logproto.Doc, contentType []byte, sc *esScratch) ([]store.ID, []error) {
	var ids []store.ID
	var errs []error
	var todo []int
	if sc != nil {
		ids, errs, todo = sc.appendSlices(len(docs))
	} else {
		ids, errs, todo = make([]store.ID, len(docs)), make([]error, len(docs)), make([]int, len(docs))
	}
	for i := range todo {
		todo[i] = i
	}
	deadline := time.Now().Add(s.fullWait)
	for {
		s.appendSome(ctx, r, docs, contentType, todo, ids, errs)
		todo = todo[:0]
		for i, err := range errs {
			if errors.Is(err, store.ErrFull) {
				todo = append(todo, i)
			}
		}
		if len(todo) == 0 || time.Now().Add(fullPoll).After(deadline) {
			return ids, errs
		}
		select {
		case <-time.After(fullPoll):
		case <-s.waitCtx.Done(): // shutting down: refuse now rather than hold the stop
			return ids, errs
		}
	}
}

// A request of a log protocol that finds the storage full waits up to
// fullWait for room, trying again every fullPoll, before it is refused:
// rsyslog's omelasticsearch writes a batch refused whole to its error file
// (whatever the status), and Fluent Bit at its default Retry_Limit drops
// it, so during a short peak a slower answer loses nothing where a refusal
// would. Shippers' own timeouts are longer (Filebeat 90 s, Logstash and
// Vector 60 s; rsyslog and Fluent Bit have none by default).
const (
	fullWait = 10 * time.Second
	fullPoll = 200 * time.Millisecond
)

// logAppendSlots bounds the documents being appended at once, server-wide:
// each waits in its own goroutine for its group commit, and a 20 MiB body
// of tiny documents would otherwise start a million goroutines at once. A
// commit takes up to 4096 appends (buffer's maxBatch); 8192 slots were no
// faster on bench/logs (187k vs 185k docs/s, medians of 3, noisy host), and
// 4096 keeps a test binary built with -race under its limit of 8128 live
// goroutines.
var logAppendSlots = make(chan struct{}, 4096)

// logDraftBudget bounds the drafts alive at once, server-wide, where the
// queue appends in batches (store.BatchAppender): a chunk of n documents
// holds n of it from before its drafts are built until its commit returns.
// It counts documents, not chunks, so that many requests of a few hundred
// documents share one commit (a bound of 4 chunks held bench/logs to about
// 3 requests a commit), while the memory stays that of 4 full chunks.
var logDraftBudget = semaphore.NewWeighted(4 * 4096)

// appendSome appends docs[i] for each i in todo, all at once (within
// logAppendSlots), and waits.
func (s *Server) appendSome(ctx *fasthttp.RequestCtx, r *route, docs []logproto.Doc, contentType []byte, todo []int, ids []store.ID, errs []error) {
	now := time.Now()
	method, uri := ctx.Method(), logURI(ctx)
	// The header fields every document of the request has alike (its
	// content type, the protocol, and an Elasticsearch action's operation)
	// are encoded once per request and operation, and shared by the
	// drafts; a document adds only its action's metadata and _id.
	sh := sharedPool.Get().(*sharedHeaders)
	defer sh.put()
	protocol := []byte(r.Protocol)
	fill := func(d *store.Draft, i int) *store.Draft {
		doc := &docs[i]
		d.Method, d.URI, d.Body, d.EnqueuedAt = method, uri, doc.Body, now
		d.Share(sh.forOp(doc.Op, contentType, protocol))
		if doc.Op != "" {
			d.AddHeader(hdrEsMeta, doc.Meta)
			if doc.ID != nil {
				d.AddHeader(hdrEsID, doc.ID)
			}
		}
		return d
	}
	if ba, ok := r.queue.(store.BatchAppender); ok {
		// The documents go to the store in chunks of at most
		// cap(logAppendSlots), each handed over whole and waited for
		// once: no goroutine per document, and the drafts alive at once
		// stay bounded as before.
		for len(todo) > 0 {
			chunk := todo[:min(len(todo), cap(logAppendSlots))]
			todo = todo[len(chunk):]
			// Never fails: the context is never done, and every holder
			// releases once its commit returns.
			_ = logDraftBudget.Acquire(context.Background(), int64(len(chunk)))
			dc := draftChunkPool.Get().(*draftChunk)
			ds := dc.get(len(chunk))
			for k, i := range chunk {
				fill(ds[k], i)
			}
			got, gotErrs := ba.AppendDrafts(s.appendCtx, ds)
			for k, i := range chunk {
				ids[i], errs[i] = got[k], gotErrs[k]
				ds[k].Reset()
			}
			draftChunkPool.Put(dc)
			logDraftBudget.Release(int64(len(chunk)))
		}
		return
	}
	var wg sync.WaitGroup
	wg.Add(len(todo))
	for _, i := range todo {
		logAppendSlots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-logAppendSlots }()
			d := fill(logDraftPool.Get().(*store.Draft), i)
			ids[i], errs[i] = r.queue.AppendDraft(s.appendCtx, d)
			d.Reset()
			logDraftPool.Put(d)
		}()
	}
	wg.Wait()
}

// sharedHeaders are the header blocks of one request's documents, one
// per Elasticsearch operation (or none), pooled.
type sharedHeaders struct {
	ops    []string
	blocks []*store.SharedHeaders
}

var sharedPool = sync.Pool{New: func() any { return new(sharedHeaders) }}

// forOp returns the block of documents of operation op: Content-Type,
// the protocol, and the operation if there is one.
func (s *sharedHeaders) forOp(op string, contentType, protocol []byte) *store.SharedHeaders {
	for i, o := range s.ops {
		if o == op {
			return s.blocks[i]
		}
	}
	k := len(s.ops)
	if k == len(s.blocks) {
		s.blocks = append(s.blocks, new(store.SharedHeaders))
	}
	b := s.blocks[k]
	b.Add(hdrContentType, contentType)
	b.Add(hdrProtocol, protocol)
	if op != "" {
		b.Add(hdrEsOp, []byte(op))
	}
	s.ops = append(s.ops, op)
	return b
}

func (s *sharedHeaders) put() {
	for _, b := range s.blocks[:len(s.ops)] {
		b.Reset()
	}
	clear(s.ops)
	s.ops = s.ops[:0]
	sharedPool.Put(s)
}

// countFailed returns how many of errs are set, and the first of them.
func countFailed(errs []error) (failed int, first error) {
	for _, e := range errs {
		if e != nil {
			if failed++; first == nil {
				first = e
			}
		}
	}
	return failed, first
}

// refusalReason and refusalCode say why a document was not stored, in the
// words of refuse (proxy.go), without request bytes.
func refusalReason(err error) string {
	switch {
	case errors.Is(err, store.ErrFull):
		return "storage is full"
	case errors.Is(err, store.ErrTooLarge):
		return "document too large"
	case errors.Is(err, store.ErrClosed):
		return "sluice is shutting down"
	default:
		return "storage error"
	}
}

func refusalCode(err error) string {
	switch {
	case errors.Is(err, store.ErrFull):
		return "storage_full"
	case errors.Is(err, store.ErrClosed):
		return "shutting_down"
	default:
		return "storage_error"
	}
}

// setRetryAfter sets Retry-After from a refusal: the store's estimate when
// full (5s if it gives none), else 1 second; whole seconds, at least one.
// It returns the wait it set.
func setRetryAfter(ctx *fasthttp.RequestCtx, err error) time.Duration {
	wait := time.Second
	var fe *store.FullError
	if errors.As(err, &fe) && fe.RetryAfter > 0 {
		wait = fe.RetryAfter
	} else if errors.Is(err, store.ErrFull) {
		wait = 5 * time.Second
	}
	wait = max(time.Second, wait.Round(time.Second))
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
	return wait
}

func (s *Server) logRefusal(r *route, err error, n int) {
	if errors.Is(err, store.ErrFull) || errors.Is(err, store.ErrClosed) {
		return // expected under back-pressure and at shutdown; the reply says it
	}
	s.log.Error("append failed", "route", r.Name, "documents", n, "err", err)
}

// writeESError answers with an Elasticsearch error body.
func writeESError(ctx *fasthttp.RequestCtx, e *logproto.Error) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(e.Status)
	ctx.SetBody(logproto.ElasticsearchError(e))
}

// writeProtoJSONError answers with sluice's own JSON error body.
func writeProtoJSONError(ctx *fasthttp.RequestCtx, e *logproto.Error) {
	writeError(ctx, e.Status, e.Type, e.Reason)
}
