package proxy

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/store"
)

// Spillover (mode: spillover, one target).
//
// A request is forwarded straight to the target, and the target's own answer
// returned with X-Sluice-Mode: forwarded, when all of these hold at that
// moment: the route's queue has nothing for the target (no message pending,
// in flight or waiting for a retry), the target's drainer is running, not
// paused and its circuit breaker closed, and it has a token and a
// concurrency slot free (Direct.TryDirect, which shares the drainer's bucket
// and slots: direct and queued requests together keep the target's rate and
// concurrency). A forwarded request that the target answered 2xx is
// remembered, when the queue can (store.ForwardRecorder; buffer can): a
// record without its body is appended as already delivered, and the answer
// carries its X-Sluice-Id; so its idempotency key names it for the
// retention, and it is counted as delivered. Before forwarding a request
// with the client's key, the queue is asked for the key: a repeat is not
// forwarded again, but answered as on a buffer route (202 with the first
// message's id and X-Sluice-Duplicate: true). Two requests with one key
// arriving at the same instant may both be forwarded. Cost: for a request
// with the client's key, a key lookup and one append (fsync as
// storage.fsync says) before the answer; without one, the append comes
// after the answer (see recordForwarded), and the answer has no id.
//
// Otherwise, or when the direct attempt fails in a way the drainer would
// retry (no connection, a timeout, or a status in the target's retry.on:
// by default 5xx, 408, 425, 429), the request is stored and answered as on a
// buffer route, 202 with X-Sluice-Mode: buffered; it is never lost. Such a
// request may then reach the target twice (the direct attempt may have been
// processed before it timed out); both carry the same Idempotency-Key: the
// client's, or one sluice makes for the direct attempt and stores with the
// message. A failure the drainer would not retry (another 4xx, 3xx) is the
// target's answer to the client, as a dead letter would be: nothing is stored.

// Direct is what a spillover route needs from its target's drainer;
// *drain.Drainer implements it.
type Direct interface {
	// TryDirect takes a token and a concurrency slot now, without waiting.
	TryDirect() (release func(), ok bool)
	// Forward sends m once and reads the answer into resp; retry reports
	// whether the outcome is one the drainer would retry.
	Forward(m *store.Message, resp *fasthttp.Response) (retry bool, err error)
}

type directTarget struct{ Direct }

// SetDirect connects the spillover route named route to its target's
// drainer. Until then the route stores every request, as a buffer route does.
func (s *Server) SetDirect(route string, d Direct) error {
	for _, r := range s.routes() {
		if r.Name == route {
			if r.Mode != "spillover" {
				return fmt.Errorf("proxy: route %q is not a spillover route", route)
			}
			r.direct.Store(&directTarget{d})
			return nil
		}
	}
	return fmt.Errorf("proxy: no route %q", route)
}

// Values of the X-Sluice-Mode header of a spillover route's answers.
const (
	HeaderMode    = "X-Sluice-Mode"
	ModeForwarded = "forwarded"
	ModeBuffered  = "buffered"
)

// spillKey is the user value under which handleSpillover hands handleBuffer
// the Idempotency-Key its direct attempt was sent with.
type spillKeyType struct{}

var spillKey spillKeyType

func (s *Server) handleSpillover(ctx *fasthttp.RequestCtx, r *route, uri []byte) {
	if !checkCallback(ctx, r) { // before a direct attempt too: 400 whichever way it would go
		return
	}
	if int64(len(ctx.PostBody())) <= r.MaxBody && s.tryForward(ctx, r, uri) {
		return
	}
	s.handleBuffer(ctx, r, uri)
	if ctx.Response.StatusCode() == fasthttp.StatusAccepted {
		ctx.Response.Header.Set(HeaderMode, ModeBuffered)
	}
}

// tryForward makes the direct attempt if the target has room and nothing is
// queued for it. It reports whether the request is answered; if not, the
// request must be stored.
func (s *Server) tryForward(ctx *fasthttp.RequestCtx, r *route, uri []byte) bool {
	dt := r.direct.Load()
	if dt == nil || !queueIdle(r.queue) {
		return false
	}
	fr, _ := r.queue.(store.ForwardRecorder)
	keyed := false
	if fr != nil && r.IdempotencyHeader != "" {
		if key := ctx.Request.Header.Peek(r.IdempotencyHeader); len(key) > 0 {
			if _, seen, err := fr.FindKey(ctx, key); err != nil || seen {
				return false // handleBuffer answers the repeat with the first id, storing nothing
			}
			keyed = true
		}
	}
	release, ok := dt.TryDirect()
	if !ok {
		return false
	}
	defer release()

	var d store.Draft
	d.Method, d.URI = ctx.Method(), uri
	addStoredHeaders(ctx, &d, nil)
	m := d.Message()
	m.Body = ctx.PostBody() // Forward only reads it, before this handler returns
	m.EnqueuedAt = time.Now()
	if r.IdempotencyHeader != "" {
		m.IdempotencyKey = string(ctx.Request.Header.Peek(r.IdempotencyHeader))
	}
	if m.IdempotencyKey == "" {
		m.IdempotencyKey = newKey()
		ctx.SetUserValue(spillKey, []byte(m.IdempotencyKey))
	}
	retry, err := dt.Forward(m, &ctx.Response)
	if err != nil && retry {
		s.log.Info("spillover: direct attempt failed; storing the request", "route", r.Name, "err", err)
		ctx.Response.Reset()
		return false
	}
	stripHopResponse(&ctx.Response.Header)
	ctx.Response.Header.Set(HeaderMode, ModeForwarded)
	if status := ctx.Response.StatusCode(); fr != nil && status >= 200 && status <= 299 {
		s.recordForwarded(ctx, r, fr, keyed, m, uri, status)
	}
	return true
}

// maxRecordsInFlight bounds the records of forwarded requests appended
// after their answers; past it, the answer waits for its record.
const maxRecordsInFlight = 1024

// recordForwarded appends the record of a forwarded request. With the
// client's key it is appended before the answer, which carries its
// X-Sluice-Id: a repeat of the key then finds it. Without one, no repeat
// can name it: it is appended after the answer (the append's fsync would
// add ~0.5 ms to it, BenchmarkSpilloverLatency), so that it is counted as
// delivered; a crash in between loses only that count.
func (s *Server) recordForwarded(ctx *fasthttp.RequestCtx, r *route, fr store.ForwardRecorder, keyed bool, m *store.Message, uri []byte, status int) {
	// The body is not stored: AppendForwarded keeps its fingerprint only.
	d := &store.Draft{Method: ctx.Method(), URI: uri, IdempotencyKey: []byte(m.IdempotencyKey), EnqueuedAt: m.EnqueuedAt, Body: ctx.PostBody()}
	record := func(c context.Context) (store.ID, error) {
		id, err := fr.AppendForwarded(c, d, status)
		if err != nil {
			s.log.Warn("spillover: a forwarded request could not be recorded; it is not counted, and a repeat of its key would be forwarded again", "route", r.Name, "err", err)
		}
		return id, err
	}
	if !keyed {
		select {
		case s.recordSlots <- struct{}{}:
			d.Method, d.URI = append([]byte(nil), d.Method...), append([]byte(nil), d.URI...) // the request's buffers are reused
			// No repeat can name a record without a key, so nothing is
			// checked against its fingerprint: the body is not kept for it
			// (up to maxRecordsInFlight bodies of max_body each, else).
			d.Body = nil
			s.records.Add(1)
			go func() {
				defer func() { <-s.recordSlots; s.records.Done() }()
				record(s.appendCtx)
			}()
			return
		default: // too many under way: this one waits
		}
	}
	if id, err := record(ctx); err == nil { // a duplicate too: the key was forwarded at the same instant
		ctx.Response.Header.SetBytesKV(headerSluiceID, id.AppendTo(nil))
	}
}

// queueIdle reports whether q has nothing pending, in flight or retrying for
// any target (a spillover route has one).
func queueIdle(q store.Queue) bool {
	for _, t := range q.Stats().Targets {
		if t.Pending != 0 || t.InFlight != 0 || t.Retrying != 0 {
			return false
		}
	}
	return true
}

var keyEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newKey returns a random Idempotency-Key for a direct attempt (128 bits).
func newKey() string {
	var b [16]byte
	rand.Read(b[:])
	return "sluice-" + keyEncoding.EncodeToString(b[:])
}
