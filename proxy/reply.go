package proxy

import (
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/store"
)

// acceptedBody is the JSON body of a 202.
type acceptedBody struct {
	ID        string           `json:"id"`
	Status    string           `json:"status"`
	StatusURL string           `json:"status_url"`
	Targets   []acceptedTarget `json:"targets"`
}

// acceptedTarget is one target's estimate in a 202.
type acceptedTarget struct {
	Target string      `json:"target"`
	Status store.Phase `json:"status,omitempty"` // a repeated Idempotency-Key: the target's status
	ETA    *time.Time  `json:"eta,omitempty"`    // absent if unknown (paused with no end)
}

// writeAccepted is the one place that builds the reply to a buffered request.
// It must only be called once the message is durable (Queue.Append returned).
// The body is built by hand: the id is base32 and target names are
// [a-z0-9_-], so nothing needs escaping, and this runs once per accepted
// request. status is the message's: "queued" for a new one, the stored
// message's (repeatStatus) for a repeated Idempotency-Key. etas lists every
// target of the route with its estimated delivery time, RFC 3339 in UTC, to
// the second, and, for a repeat, the target's own status.
func writeAccepted(ctx *fasthttp.RequestCtx, id store.ID, status string, etas []targetETA) {
	var idb [32]byte
	ids := id.AppendTo(idb[:0])
	var lb [64]byte
	loc := append(append(lb[:0], StatusPrefix...), ids...)
	// The keys are canonical already: SetCanonical skips normalizing them.
	ctx.Response.Header.SetCanonical(headerLocation, loc)
	ctx.Response.Header.SetCanonical(headerSluiceID, ids)
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	// Built on the stack (up to a few targets) and copied once into the
	// response's pooled body store.
	var bb [512]byte
	body := append(bb[:0], `{"id":"`...)
	body = append(body, ids...)
	body = append(body, `","status":"`...)
	body = append(body, status...)
	body = append(body, `","status_url":"`...)
	body = append(body, loc...)
	body = append(body, `","targets":[`...)
	for i, e := range etas {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"target":"`...)
		body = append(body, e.name...)
		body = append(body, '"')
		if e.phase != "" {
			body = append(body, `,"status":"`...)
			body = append(body, e.phase...)
			body = append(body, '"')
		}
		if e.ok {
			body = append(body, `,"eta":"`...)
			body = e.at.UTC().AppendFormat(body, time.RFC3339)
			body = append(body, '"')
		}
		body = append(body, '}')
	}
	body = append(body, "]}\n"...)
	ctx.Response.SetBody(body)
}

var (
	headerLocation = []byte("Location")
	headerSluiceID = []byte("X-Sluice-Id")
)

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string     `json:"code"`
	Message string     `json:"message"`
	Target  string     `json:"target,omitempty"` // backlog_too_long: the target whose estimate is too late
	ETA     *time.Time `json:"eta,omitempty"`    // backlog_too_long: that estimate; absent if unknown
}

// writeError answers with status and a JSON error body naming what is wrong.
// errorJSON is the body writeError writes for code and msg (for the event
// loop, which writes its answers itself).
func errorJSON(code, msg string) []byte {
	b, err := json.Marshal(errorBody{Error: errorDetail{Code: code, Message: msg}})
	if err != nil {
		b = []byte(`{"error":{"code":"internal","message":"encoding the reply failed"}}`)
	}
	return append(b, '\n')
}

func writeError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	writeJSON(ctx, status, errorBody{Error: errorDetail{Code: code, Message: msg}})
}

// errCodeKey is the user value under which writeJSON leaves an error's code.
type errCodeKeyType struct{}

var errCodeKey errCodeKeyType

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	if e, ok := v.(errorBody); ok {
		ctx.SetUserValue(errCodeKey, e.Error.Code) // for the Observer
	}
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(`{"error":{"code":"internal","message":"encoding the reply failed"}}`)
		status = fasthttp.StatusInternalServerError
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(append(b, '\n'))
}

// messageStatus is the JSON of GET /_sluice/v1/messages/{id}.
type messageStatus struct {
	ID         string         `json:"id"`
	Route      string         `json:"route"`
	Method     string         `json:"method"`
	URI        string         `json:"uri"`
	EnqueuedAt time.Time      `json:"enqueued_at"`
	Targets    []targetStatus `json:"targets"`
}

type targetStatus struct {
	Target     string      `json:"target"`
	Status     store.Phase `json:"status"`
	Attempts   int         `json:"attempts"`
	StatusCode int         `json:"status_code,omitempty"` // of the last attempt
	At         *time.Time  `json:"at,omitempty"`          // time of the last attempt (delivery time when delivered)
	NextTry    *time.Time  `json:"next_try,omitempty"`
	// ETA is the estimated delivery time of a queued or retrying message.
	ETA       *time.Time        `json:"eta,omitempty"`
	LastError string            `json:"last_error,omitempty"`
	Response  *capturedResponse `json:"response,omitempty"` // capture_response: the answer to the delivery
	History   []store.Attempt   `json:"history,omitempty"`
}

// capturedResponse is a target's answer as the status API shows it. The body
// is a string if it is valid UTF-8 (a cut in the middle of a character at
// the capture limit is trimmed), else base64 in body_base64.
type capturedResponse struct {
	Status     int               `json:"status"`
	Headers    map[string]string `json:"headers,omitempty"` // repeated headers joined with ", "
	Body       *string           `json:"body,omitempty"`
	BodyBase64 []byte            `json:"body_base64,omitempty"`
	Truncated  bool              `json:"truncated,omitempty"` // the body was cut at capture_response.max_bytes
	// BodyOmitted says there is a captured body, shown only to a request
	// with the admin token.
	BodyOmitted bool `json:"body_omitted,omitempty"`
}

// newCapturedResponse shows r: the values of headers in
// status_api.redact_headers as "redacted", the body only if bodies.
func (s *Server) newCapturedResponse(r *store.Response, bodies bool) *capturedResponse {
	out := &capturedResponse{Status: r.Status, Truncated: r.Truncated}
	if len(r.Header) > 0 {
		out.Headers = make(map[string]string, len(r.Header))
		for _, h := range r.Header {
			if s.redactHeader(h.Name) {
				out.Headers[h.Name] = redacted
			} else if prev, ok := out.Headers[h.Name]; ok {
				out.Headers[h.Name] = prev + ", " + h.Value
			} else {
				out.Headers[h.Name] = h.Value
			}
		}
	}
	body := r.Body
	if !bodies {
		out.BodyOmitted = len(body) > 0
		return out
	}
	if r.Truncated && !utf8.Valid(body) {
		// The cut may have split the last character: drop its bytes.
		for i := 1; i <= utf8.UTFMax && i <= len(body); i++ {
			if utf8.Valid(body[:len(body)-i]) && !utf8.FullRune(body[len(body)-i:]) {
				body = body[:len(body)-i]
				break
			}
		}
	}
	switch {
	case len(r.Body) == 0:
	case utf8.Valid(body):
		s := string(body)
		out.Body = &s
	default:
		out.BodyBase64 = r.Body
	}
	return out
}

func (s *Server) handleStatus(ctx *fasthttp.RequestCtx, path []byte) {
	sa := s.cfg.Policy.StatusAPI
	if !sa.Enabled {
		writeError(ctx, fasthttp.StatusNotFound, "no_route", "the status API is turned off (status_api.enabled: false)")
		return
	}
	access := s.statusAccess(ctx)
	if !access.ok {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="sluice status"`)
		writeError(ctx, fasthttp.StatusUnauthorized, "unauthorized", "the status API needs Authorization: Bearer with status_api.token (or the admin token)")
		return
	}
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "the status API answers GET and HEAD")
		return
	}
	raw := string(path[len(StatusPrefix):])
	id, err := store.ParseID(raw)
	if err != nil || id.String() != raw {
		// Only the canonical spelling: one message, one URL.
		writeError(ctx, fasthttp.StatusBadRequest, "bad_id", "not a message id: an id is 26 characters of lower-case base32 (0-9, a-z without i, l, o, u), as the 202 gave it")
		return
	}
	t := s.table.Load()
	for _, r := range append(t.routes[:len(t.routes):len(t.routes)], t.retired...) {
		if r.queue == nil {
			continue
		}
		m, sts, err := r.queue.Lookup(id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			s.log.Error("status lookup failed", "route", r.Name, "seq", id.Seq(), "err", err)
			writeError(ctx, fasthttp.StatusInternalServerError, "lookup_failed", "the message's record could not be read: "+err.Error())
			return
		}
		out := messageStatus{ID: raw, Route: r.Name, Method: m.Method, URI: m.URI, EnqueuedAt: m.EnqueuedAt.UTC()}
		if !sa.ShowQuery {
			out.URI = redactQuery(out.URI)
		}
		now := time.Now()
		qs := r.queue.Stats()
		for i, st := range sts {
			ts := targetStatus{Target: st.Target, Status: st.Phase, Attempts: st.Attempts, History: st.History}
			if eta, ok := r.statusETA(i, id.Seq(), &st, &qs, now); ok {
				eta = eta.UTC().Truncate(time.Second)
				ts.ETA = &eta
			}
			if st.Response != nil {
				ts.Response = s.newCapturedResponse(st.Response, access.bodies)
			}
			if last, ok := st.Last(); ok {
				at := last.At.UTC()
				ts.At, ts.StatusCode, ts.LastError = &at, last.Status, last.Error
			}
			if st.Phase == store.Retrying {
				nt := st.NextTry.UTC()
				ts.NextTry = &nt
			}
			out.Targets = append(out.Targets, ts)
		}
		writeJSON(ctx, fasthttp.StatusOK, out)
		return
	}
	writeError(ctx, fasthttp.StatusNotFound, "not_found", "no message with this id (never accepted, or expired)")
}
