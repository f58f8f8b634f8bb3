package proxy

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

// acceptedBody is the JSON body of a 202.
type acceptedBody struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	StatusURL string `json:"status_url"`
}

// writeAccepted is the one place that builds the reply to a buffered request.
// It must only be called once the message is durable (Queue.Append returned).
// The body is built by hand: the id is base32, so nothing needs escaping, and
// this runs once per accepted request.
func writeAccepted(ctx *fasthttp.RequestCtx, id buffer.ID) {
	var idb [32]byte
	ids := id.AppendTo(idb[:0])
	var lb [64]byte
	loc := append(append(lb[:0], StatusPrefix...), ids...)
	ctx.Response.Header.SetBytesV("Location", loc)
	ctx.Response.Header.SetBytesV("X-Sluice-Id", ids)
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	b := ctx.Response.BodyWriter()
	body := append(make([]byte, 0, 128), `{"id":"`...)
	body = append(body, ids...)
	body = append(body, `","status":"queued","status_url":"`...)
	body = append(body, loc...)
	body = append(body, "\"}\n"...)
	b.Write(body)
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers with status and a JSON error body naming what is wrong.
func writeError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	writeJSON(ctx, status, errorBody{Error: errorDetail{Code: code, Message: msg}})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
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
	Target     string           `json:"target"`
	Status     buffer.Phase     `json:"status"`
	Attempts   int              `json:"attempts"`
	StatusCode int              `json:"status_code,omitempty"` // of the last attempt
	At         *time.Time       `json:"at,omitempty"`          // time of the last attempt (delivery time when delivered)
	NextTry    *time.Time       `json:"next_try,omitempty"`
	LastError  string           `json:"last_error,omitempty"`
	History    []buffer.Attempt `json:"history,omitempty"`
}

func (s *Server) handleStatus(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "the status API answers GET and HEAD")
		return
	}
	raw := string(ctx.Path()[len(StatusPrefix):])
	id, err := buffer.ParseID(raw)
	if err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "bad_id", err.Error())
		return
	}
	for _, r := range s.routes {
		if r.queue == nil {
			continue
		}
		m, sts, err := r.queue.Lookup(id)
		if errors.Is(err, buffer.ErrNotFound) {
			continue
		}
		if err != nil {
			s.log.Error("status lookup failed", "route", r.Name, "id", raw, "err", err)
			writeError(ctx, fasthttp.StatusInternalServerError, "lookup_failed", "the message's record could not be read: "+err.Error())
			return
		}
		out := messageStatus{ID: raw, Route: r.Name, Method: m.Method, URI: m.URI, EnqueuedAt: m.EnqueuedAt.UTC()}
		for _, st := range sts {
			ts := targetStatus{Target: st.Target, Status: st.Phase, Attempts: st.Attempts, History: st.History}
			if last, ok := st.Last(); ok {
				at := last.At.UTC()
				ts.At, ts.StatusCode, ts.LastError = &at, last.Status, last.Error
			}
			if st.Phase == buffer.Retrying {
				nt := st.NextTry.UTC()
				ts.NextTry = &nt
			}
			out.Targets = append(out.Targets, ts)
		}
		writeJSON(ctx, fasthttp.StatusOK, out)
		return
	}
	writeError(ctx, fasthttp.StatusNotFound, "not_found", "no message with id "+raw+" (never accepted, or expired)")
}
