package admin

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// Messages is what the API needs to list, count and replay a route's
// messages; cmd/sluice adapts the store's Lister and Replayer to it.
// Unknown routes and targets are ErrNoTarget.
type Messages interface {
	// List calls fn with each message of route matching f with a seq
	// above after, in order, until fn returns false or limit messages
	// were looked at; it returns the last seq looked at and whether the
	// route's messages were read to their end (store.Lister.Messages).
	List(route string, f store.Filter, after uint64, limit int, fn func(*store.Row) bool) (last uint64, end bool, err error)
	// Counts counts each target's messages accepted in [since, until).
	Counts(route string, since, until time.Time) ([]store.Counts, error)
	// Replay puts a delivered or dead message back into the target's
	// retry schedule, due at at (ErrNotFound: not delivered or dead).
	Replay(ctx context.Context, route, target string, seq uint64, at time.Time) error
}

// Row is one message as GET /v1/routes/{route}/messages shows it.
type Row struct {
	ID         string      `json:"id"`
	Key        string      `json:"idempotency_key,omitempty"`
	AcceptedAt time.Time   `json:"accepted_at,omitzero"`
	Targets    []RowTarget `json:"targets"`
}

// RowTarget is where a listed message stands for one target.
type RowTarget struct {
	Target      string    `json:"target"`
	State       string    `json:"state"`
	StatusCode  int       `json:"status_code,omitempty"`
	Attempts    int       `json:"attempts"`
	DeliveredAt time.Time `json:"delivered_at,omitzero"`
	DeadAt      time.Time `json:"dead_at,omitzero"`
	ExpiredAt   time.Time `json:"expired_at,omitzero"`
	PurgedAt    time.Time `json:"purged_at,omitzero"`
	LastAttempt time.Time `json:"last_attempt_at,omitzero"` // other states
	Reason      string    `json:"reason,omitempty"`         // dead, purged, expired
}

// ToRow converts a store row to the API's form.
func ToRow(r *store.Row) Row {
	out := Row{ID: r.ID.String(), Key: r.Key, AcceptedAt: r.AcceptedAt, Targets: make([]RowTarget, 0, len(r.Targets))}
	for _, t := range r.Targets {
		rt := RowTarget{Target: t.Target, State: string(t.Phase), StatusCode: t.Status, Attempts: t.Attempts, Reason: t.Reason}
		switch t.Phase {
		case store.Delivered:
			rt.DeliveredAt = t.At
		case store.Dead:
			rt.DeadAt = t.At
		case store.Expired:
			rt.ExpiredAt = t.At
		case store.Purged:
			rt.PurgedAt = t.At
		default:
			rt.LastAttempt = t.At
		}
		out.Targets = append(out.Targets, rt)
	}
	return out
}

// TargetCounts are one target's counts as the API shows them: the store's,
// with Pending (queued + in flight + retrying + parked).
type TargetCounts struct {
	store.Counts
	Pending uint64 `json:"pending"`
}

// CountsReply is the answer of GET /v1/routes/{route}/counts.
type CountsReply struct {
	Route   string         `json:"route"`
	Since   time.Time      `json:"since,omitzero"`
	Until   time.Time      `json:"until,omitzero"`
	Targets []TargetCounts `json:"targets"`
}

// MessagesReply is one page of GET /v1/routes/{route}/messages.
type MessagesReply struct {
	Messages []Row `json:"messages"`
	// Next is the cursor of the next page (pass it as cursor=); "" once
	// the list has been read to its end. A page may hold fewer than limit
	// messages (or none) and still have a next: each page looks at a
	// bounded number of messages.
	Next string `json:"next,omitempty"`
}

const (
	listScan      = 100000 // messages one page looks at, at most
	exportChunk   = 4096   // messages read per store call while streaming
	defaultLimit  = 100
	maxPageLimit  = 1000
	exportTimeout = time.Minute // each chunk of an export must be written within it
	// maxReplayErrors failed replays end a replay by filter (done: false):
	// each is tried for ~0.3 s, and a failing store would otherwise be
	// tried for every message the filter matches.
	maxReplayErrors = 10
)

// EncodeCursor makes the opaque cursor of a page that ends at seq.
func EncodeCursor(seq uint64) string {
	return base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64([]byte{'c', '1'}, seq))
}

// DecodeCursor reads a cursor made by EncodeCursor.
func DecodeCursor(s string) (uint64, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 10 || b[0] != 'c' || b[1] != '1' {
		return 0, errors.New("cursor: expected the next of an earlier page")
	}
	return binary.BigEndian.Uint64(b[2:]), nil
}

// paramError is a bad query parameter: 400 naming it.
type paramError struct{ param, msg string }

func (e *paramError) Error() string { return e.param + ": " + e.msg }

func badParam(w http.ResponseWriter, err error) {
	var pe *paramError
	if errors.As(err, &pe) {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: errorDetail{Code: "bad_request", Message: err.Error(), Param: pe.param}})
		return
	}
	writeError(w, http.StatusBadRequest, "bad_request", err.Error())
}

// parseTime reads an RFC 3339 query parameter.
func parseTime(r *http.Request, name string) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return t, &paramError{name, "expected an RFC 3339 time such as 2026-12-05T01:00:00Z"}
	}
	return t, nil
}

// timeRange reads the query's since and until; until, when both are
// given, must be after since.
func timeRange(r *http.Request) (since, until time.Time, err error) {
	if since, err = parseTime(r, "since"); err != nil {
		return
	}
	if until, err = parseTime(r, "until"); err != nil {
		return
	}
	if !since.IsZero() && !until.IsZero() && !until.After(since) {
		err = &paramError{"until", "must be after since"}
	}
	return
}

// messageFilter reads the list's filter from the query.
func messageFilter(r *http.Request) (store.Filter, error) {
	q := r.URL.Query()
	for name := range q {
		switch name {
		case "target", "state", "since", "until", "status", "key", "limit", "cursor", "format":
		default:
			return store.Filter{}, &paramError{"query", "unknown parameter (expected target, state, since, until, status, key, limit, cursor, format)"}
		}
	}
	f := store.Filter{Target: q.Get("target"), Key: q.Get("key")}
	if s := q.Get("state"); s != "" {
		if !store.Phase(s).Valid() {
			return f, &paramError{"state", "expected queued, in_flight, retrying, parked, delivered, dead, expired or purged"}
		}
		f.Phase = store.Phase(s)
	}
	var err error
	if f.Since, f.Until, err = timeRange(r); err != nil {
		return f, err
	}
	if v := q.Get("status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			return f, &paramError{"status", "expected an HTTP status code, 100 to 599"}
		}
		f.Status = n
	}
	if len(f.Key) > 1024 {
		return f, &paramError{"key", "longer than 1024 bytes"}
	}
	return f, nil
}

func (s *Server) messagesStore(w http.ResponseWriter) bool {
	if s.cfg.Messages == nil {
		notSupported(w, "message listing is not supported by this server")
		return false
	}
	return true
}

// listMessages serves GET /v1/routes/{route}/messages: a JSON page, or
// with format=ndjson every matching row, streamed a chunk at a time.
func (s *Server) listMessages(w http.ResponseWriter, r *http.Request) {
	if !s.messagesStore(w) {
		return
	}
	f, err := messageFilter(r)
	if err != nil {
		badParam(w, err)
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("cursor"); v != "" {
		if after, err = DecodeCursor(v); err != nil {
			badParam(w, &paramError{"cursor", "expected the next of an earlier page"})
			return
		}
	}
	route := r.PathValue("route")
	switch q.Get("format") {
	case "", "json":
	case "ndjson":
		if q.Get("limit") != "" {
			badParam(w, &paramError{"limit", "not with format=ndjson, which streams every matching message"})
			return
		}
		s.exportMessages(w, r, route, f, after)
		return
	default:
		badParam(w, &paramError{"format", "expected json or ndjson"})
		return
	}
	limit := defaultLimit
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPageLimit {
			badParam(w, &paramError{"limit", fmt.Sprintf("expected 1 to %d", maxPageLimit)})
			return
		}
	}
	out := MessagesReply{Messages: []Row{}}
	last, end, err := s.cfg.Messages.List(route, f, after, listScan, func(row *store.Row) bool {
		out.Messages = append(out.Messages, ToRow(row))
		return len(out.Messages) < limit
	})
	if err != nil {
		s.messagesError(w, err)
		return
	}
	if !end {
		out.Next = EncodeCursor(last)
	}
	writeJSON(w, http.StatusOK, out)
}

// exportMessages streams every matching row as one JSON line each. The
// store is read exportChunk messages at a time and the output flushed
// after each chunk: memory stays one chunk's rows whatever the count.
// An error after the first row ends the stream with a line
// {"error": {"code", "message"}} (as the reply would have been); a client can tell a complete export by its last line,
// {"end": true, "rows": N}.
func (s *Server) exportMessages(w http.ResponseWriter, r *http.Request, route string, f store.Filter, after uint64) {
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	started := false
	start := func() {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("Cache-Control", "no-store")
			started = true
		}
	}
	rows := 0
	var werr error
	for r.Context().Err() == nil {
		rc.SetWriteDeadline(time.Now().Add(exportTimeout))
		last, end, err := s.cfg.Messages.List(route, f, after, exportChunk, func(row *store.Row) bool {
			start()
			rows++
			werr = enc.Encode(ToRow(row))
			return werr == nil
		})
		if err != nil && !started {
			s.messagesError(w, err)
			return
		}
		start()
		if err != nil {
			_, e := s.messagesErrorDetail(err)
			enc.Encode(errorBody{Error: e})
			bw.Flush()
			return
		}
		if werr != nil {
			return // the client went away
		}
		if err := bw.Flush(); err != nil {
			return
		}
		rc.Flush()
		if end {
			enc.Encode(map[string]any{"end": true, "rows": rows})
			bw.Flush()
			return
		}
		after = last
	}
}

func (s *Server) messagesError(w http.ResponseWriter, err error) {
	status, e := s.messagesErrorDetail(err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, errorBody{Error: e})
}

// messagesErrorDetail is the answer to an error of the message store: its
// status and error, as a reply or as an export's last line.
func (s *Server) messagesErrorDetail(err error) (int, errorDetail) {
	switch {
	case errors.Is(err, store.ErrUnknownTarget): // a filter naming a target the route does not have
		pe := &paramError{"target", "the route has no such target"}
		return http.StatusBadRequest, errorDetail{Code: "bad_request", Message: pe.Error(), Param: pe.param}
	case errors.Is(err, ErrUnsupported):
		return http.StatusNotImplemented, errorDetail{Code: "not_supported", Message: err.Error()}
	case errors.Is(err, ErrNoTarget):
		return http.StatusNotFound, errorDetail{Code: "no_target", Message: err.Error()}
	case errors.Is(err, store.ErrIO):
		s.log.Warn("messages: the store could not be read just now", "err", err)
		return storeUnavailable(err)
	}
	s.log.Error("messages", "err", err)
	return http.StatusInternalServerError, errorDetail{Code: "store_error", Message: err.Error()}
}

// getCounts serves GET /v1/routes/{route}/counts?since=&until=.
func (s *Server) getCounts(w http.ResponseWriter, r *http.Request) {
	if !s.messagesStore(w) {
		return
	}
	for name := range r.URL.Query() {
		if name != "since" && name != "until" {
			badParam(w, &paramError{"query", "unknown parameter (expected since, until)"})
			return
		}
	}
	since, until, err := timeRange(r)
	if err != nil {
		badParam(w, err)
		return
	}
	route := r.PathValue("route")
	cs, err := s.cfg.Messages.Counts(route, since, until)
	if err != nil {
		s.messagesError(w, err)
		return
	}
	out := CountsReply{Route: route, Since: since, Until: until, Targets: make([]TargetCounts, 0, len(cs))}
	for _, c := range cs {
		out.Targets = append(out.Targets, TargetCounts{Counts: c, Pending: c.Pending()})
	}
	writeJSON(w, http.StatusOK, out)
}

// replayRequest is the body of POST .../targets/{target}/replay.
type replayRequest struct {
	Since time.Time `json:"since,omitzero"` // accepted at or after
	Until time.Time `json:"until,omitzero"` // accepted before
	State string    `json:"state"`          // delivered or dead
	// Rate spreads the replayed messages' due times ("10/s" makes one due
	// every 100ms; default 10/s; "unlimited" all at once). The target's
	// own rate and limiter still apply.
	Rate string `json:"rate,omitempty"`
}

// ReplayResult is the answer of a replay by filter.
type ReplayResult struct {
	Replayed int      `json:"replayed"`
	Skipped  int      `json:"skipped,omitempty"` // matched, then changed phase before the replay (e.g. retried meanwhile)
	Errors   []string `json:"errors,omitempty"`  // at most maxReplayErrors: the replay stops there
	// Done is false when the scan stopped at its bound (1000000 messages
	// looked at): send the same request again for the rest.
	Done bool `json:"done"`
}

// replayMessages serves POST /v1/routes/{route}/targets/{target}/replay:
// every message of the target accepted in [since, until) that is in the
// state given goes back into the target's retry schedule, due one after
// another at the rate, and is delivered again through the target's
// limiter; each replay is recorded in the message's history.
func (s *Server) replayMessages(w http.ResponseWriter, r *http.Request) {
	if !s.messagesStore(w) {
		return
	}
	var req replayRequest
	if !readJSON(w, r, &req) {
		return
	}
	f := store.Filter{Target: r.PathValue("target"), Since: req.Since, Until: req.Until}
	switch req.State {
	case "delivered", "dead":
		f.Phase = store.Phase(req.State)
	default:
		badParam(w, &paramError{"state", `expected "delivered" or "dead"`})
		return
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		badParam(w, &paramError{"until", "must be after since"})
		return
	}
	rs := req.Rate
	if rs == "" {
		rs = "10/s"
	}
	rate, err := policies.ParseRate(rs)
	if err != nil || rate.Paused() {
		badParam(w, &paramError{"rate", "expected a rate above 0 such as 10/s, or unlimited"})
		return
	}
	var step time.Duration
	if !rate.Unlimited {
		step = time.Duration(float64(time.Second) / rate.PerSecond)
	}
	route, target := r.PathValue("route"), f.Target
	ctx := r.Context()
	res := ReplayResult{}
	at := s.cfg.Now()
	var after uint64
	scanned := 0
	for scanned < maxScan && ctx.Err() == nil {
		// A page's seqs are read first, then replayed: a replayed
		// message is retrying, so it never matches again.
		var seqs []uint64
		last, end, err := s.cfg.Messages.List(route, f, after, pageSize, func(row *store.Row) bool {
			seqs = append(seqs, row.ID.Seq())
			return true
		})
		scanned += pageSize
		if err != nil {
			if errors.Is(err, ErrUnsupported) {
				notSupported(w, err.Error())
				return
			}
			if errors.Is(err, ErrNoTarget) || errors.Is(err, store.ErrUnknownTarget) { // the path's route or target
				writeError(w, http.StatusNotFound, "no_target", fmt.Sprintf("route %q has no buffered target %q", route, target))
				return
			}
			res.Errors = append(res.Errors, err.Error())
			break
		}
		for _, seq := range seqs {
			err := s.replayOne(ctx, route, target, seq, at)
			switch {
			case err == nil:
				res.Replayed++
				at = at.Add(step)
			case errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrNotFound):
				res.Skipped++
			default:
				res.Errors = append(res.Errors, fmt.Sprintf("seq %d: %v", seq, err))
			}
			if len(res.Errors) >= maxReplayErrors {
				break
			}
		}
		if len(res.Errors) >= maxReplayErrors {
			break // the store is failing: stop rather than try every message
		}
		if end {
			res.Done = len(res.Errors) == 0
			break
		}
		after = last
	}
	s.log.Info("messages replayed", "route", route, "target", target, "state", req.State, "replayed", res.Replayed, "errors", len(res.Errors))
	status := http.StatusOK
	if len(res.Errors) > 0 {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, res)
}

// replayOne replays one message, trying again a few times while its
// outcome is being recorded (in flight for a moment).
func (s *Server) replayOne(ctx context.Context, route, target string, seq uint64, at time.Time) error {
	return tryWhileBusy(ctx, func() error { return s.cfg.Messages.Replay(ctx, route, target, seq, at) })
}
