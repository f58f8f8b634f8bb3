package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// DeadLetter is one message that failed for good for one target.
type DeadLetter struct {
	ID         string    `json:"id"`
	Seq        uint64    `json:"-"` // position in the queue: the list's order and cursor
	Method     string    `json:"method,omitempty"`
	URI        string    `json:"uri,omitempty"`
	EnqueuedAt time.Time `json:"enqueued_at,omitzero"`
	Attempts   int       `json:"attempts"`
	Status     int       `json:"status,omitempty"` // the last attempt's HTTP status; 0: no answer
	Error      string    `json:"error,omitempty"`  // the last attempt's error
	Class      string    `json:"class"`            // 5xx, 4xx, 3xx, timeout, connect, damaged or other
	DeadAt     time.Time `json:"dead_at,omitzero"` // the last attempt's time
	Damaged    bool      `json:"damaged,omitempty"`

	// Show only (GET .../dead/{id}):
	Header  map[string][]string `json:"header,omitempty"`
	Body    string              `json:"body,omitempty"`        // as text, if UTF-8
	Body64  []byte              `json:"body_base64,omitempty"` // else
	History []Attempt           `json:"history,omitempty"`
}

// Attempt is one delivery attempt of a dead letter.
type Attempt struct {
	N      int       `json:"n"`
	At     time.Time `json:"at"`
	Status int       `json:"status,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// DeadLetters is what the API needs from the store's dead-letter lists;
// cmd/sluice adapts the store to it.
type DeadLetters interface {
	// List returns up to limit dead letters of the target with a seq above
	// after, oldest first, without headers, body or history.
	List(route, target string, after uint64, limit int) ([]DeadLetter, error)
	// Get returns one dead letter with headers, body and history;
	// ErrNotFound if id is not a dead letter of the target.
	Get(route, target, id string) (DeadLetter, error)
	// Revive puts a dead letter back into the target's retry schedule, due
	// at at; the drainer then delivers it through the target's limiter.
	Revive(ctx context.Context, route, target string, seq uint64, at time.Time) error
	// Purge removes a dead letter from the list (it stays dead).
	Purge(ctx context.Context, route, target string, seq uint64) error
}

// ErrNotFound is returned by DeadLetters for an unknown id; ErrNoTarget for
// an unknown route or target.
var ErrNotFound = errors.New("not found")

// ClassOf classifies an attempt's outcome for filtering: the status class,
// or the kind of error when there was no answer.
func ClassOf(status int, errText string) string {
	switch {
	case status > 0:
		return strconv.Itoa(status/100) + "xx"
	case strings.Contains(errText, "timeout") || strings.Contains(errText, "timed out"):
		return "timeout"
	case strings.Contains(errText, "connect") || strings.Contains(errText, "dial") || strings.Contains(errText, "refused"):
		return "connect"
	case strings.Contains(errText, "damaged") || strings.Contains(errText, "checksum") || strings.Contains(errText, "crc"):
		return "damaged"
	}
	return "other"
}

// wellFormedID reports whether id looks like a message id (lower-case
// letters and digits, at most 64), so that an answer may name it.
func wellFormedID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '-') {
			return false
		}
	}
	return true
}

// deadFilter selects dead letters.
type deadFilter struct {
	Status int       `json:"status,omitempty"` // the last attempt's status code
	Class  string    `json:"class,omitempty"`  // 5xx, 4xx, timeout, connect, damaged, other
	Since  time.Time `json:"since,omitzero"`   // dead at or after
	Until  time.Time `json:"until,omitzero"`   // dead before
}

func (f *deadFilter) match(d *DeadLetter) bool {
	return (f.Status == 0 || d.Status == f.Status) &&
		(f.Class == "" || d.Class == f.Class) &&
		(f.Since.IsZero() || !d.DeadAt.Before(f.Since)) &&
		(f.Until.IsZero() || d.DeadAt.Before(f.Until))
}

func (f *deadFilter) check() error {
	switch f.Class {
	case "", "5xx", "4xx", "3xx", "2xx", "1xx", "timeout", "connect", "damaged", "other":
	default:
		return &paramError{"class", "expected 5xx, 4xx, 3xx, timeout, connect, damaged or other"}
	}
	if f.Status != 0 && (f.Status < 100 || f.Status > 599) {
		return &paramError{"status", fmt.Sprintf("%d is not an HTTP status code, 100 to 599", f.Status)}
	}
	return nil
}

const (
	changeTries  = 5       // tries of one replay or purge whose letter is busy
	pageSize     = 500     // dead letters read from the store at a time
	maxListLimit = 1000    // a list answers at most this many
	maxScan      = 1000000 // dead letters one request looks at, at most
)

// tryWhileBusy calls change until it succeeds or fails for good. A message
// whose outcome is still being recorded is held by its drainer for a moment
// (the store says "in flight; try again"): it is tried again a few times,
// for up to ~0.3 s, before the error is reported. Not found, no such
// target, not supported and a cancelled request are final.
func tryWhileBusy(ctx context.Context, change func() error) error {
	var err error
	for try := range changeTries {
		err = change()
		if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrNotFound) ||
			errors.Is(err, ErrNoTarget) || errors.Is(err, ErrUnsupported) || ctx.Err() != nil {
			return err
		}
		time.Sleep(time.Duration(try+1) * 20 * time.Millisecond)
	}
	return err
}

// scan calls fn with each dead letter matching f with a seq above after, in
// order, until fn returns false, the list ends, or maxScan were read. It
// returns the last seq read and whether the list ended.
func (s *Server) scan(route, target string, after uint64, f *deadFilter, fn func(*DeadLetter) bool) (last uint64, end bool, err error) {
	last = after
	for read := 0; read < maxScan; {
		page, err := s.cfg.Dead.List(route, target, last, pageSize)
		if err != nil {
			return last, false, err
		}
		for i := range page {
			read++
			last = page[i].Seq
			if f.match(&page[i]) && !fn(&page[i]) {
				return last, false, nil
			}
		}
		if len(page) < pageSize {
			return last, true, nil
		}
	}
	return last, false, nil
}

func (s *Server) deadStore(w http.ResponseWriter) bool {
	if s.cfg.Dead == nil {
		notSupported(w, "dead letters are not supported by this server")
		return false
	}
	return true
}

func (s *Server) deadError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNoTarget):
		writeError(w, http.StatusNotFound, "no_target", err.Error())
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, store.ErrIO):
		s.log.Warn("dead letters: the store could not be read just now", "err", err)
		status, e := storeUnavailable(err)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, status, errorBody{Error: e})
	default:
		s.log.Error("dead letters", "err", err)
		writeError(w, http.StatusInternalServerError, "store_error", err.Error())
	}
}

// queryFilter reads a filter from the query: status, class, since, until
// (RFC 3339). Its errors are *paramError, naming the parameter.
func queryFilter(r *http.Request) (deadFilter, error) {
	var f deadFilter
	q := r.URL.Query()
	if v := q.Get("status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return f, &paramError{"status", "expected an HTTP status code such as 503"}
		}
		f.Status = n
	}
	f.Class = q.Get("class")
	var err error
	if f.Since, err = parseTime(r, "since"); err != nil {
		return f, err
	}
	if f.Until, err = parseTime(r, "until"); err != nil {
		return f, err
	}
	return f, f.check()
}

type deadList struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	// Next is the cursor of the next page (pass it as after=); "" when the
	// list has been read to its end.
	Next string `json:"next,omitempty"`
}

func (s *Server) listDead(w http.ResponseWriter, r *http.Request) {
	if !s.deadStore(w) {
		return
	}
	f, err := queryFilter(r)
	if err != nil {
		badParam(w, err)
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxListLimit {
			badParam(w, &paramError{"limit", fmt.Sprintf("expected 1 to %d", maxListLimit)})
			return
		}
	}
	var after uint64
	if v := r.URL.Query().Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			badParam(w, &paramError{"after", "expected the next cursor of an earlier page"})
			return
		}
	}
	out := deadList{DeadLetters: []DeadLetter{}}
	route, target := r.PathValue("route"), r.PathValue("target")
	last, end, err := s.scan(route, target, after, &f, func(d *DeadLetter) bool {
		out.DeadLetters = append(out.DeadLetters, *d)
		return len(out.DeadLetters) < limit
	})
	if err != nil {
		s.deadError(w, err)
		return
	}
	if !end {
		out.Next = strconv.FormatUint(last, 10)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) showDead(w http.ResponseWriter, r *http.Request) {
	if !s.deadStore(w) {
		return
	}
	d, err := s.cfg.Dead.Get(r.PathValue("route"), r.PathValue("target"), r.PathValue("id"))
	if err != nil {
		s.deadError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// deadAction is the body of replay and purge: ids, or a filter, or all.
type deadAction struct {
	IDs    []string    `json:"ids,omitempty"`
	Filter *deadFilter `json:"filter,omitempty"`
	All    bool        `json:"all,omitempty"`
	// Rate (replay only) spreads the replayed letters' due times: "10/s"
	// makes one due every 100ms. The target's own rate still applies.
	// Default 10/s; "unlimited" makes them all due at once.
	Rate string `json:"rate,omitempty"`
}

type deadResult struct {
	Replayed int      `json:"replayed,omitempty"`
	Purged   int      `json:"purged,omitempty"`
	NotFound []string `json:"not_found,omitempty"` // well-formed ids that are not dead letters of the target
	Invalid  int      `json:"invalid,omitempty"`   // ids that are not message ids at all (not echoed)
	Errors   []string `json:"errors,omitempty"`
	// Done is false when the scan stopped at its bound (1000000 looked
	// at): run the same request again for the rest.
	Done bool `json:"done"`
}

func (s *Server) replayDead(w http.ResponseWriter, r *http.Request) { s.deadAct(w, r, true) }
func (s *Server) purgeDead(w http.ResponseWriter, r *http.Request)  { s.deadAct(w, r, false) }

func (s *Server) deadAct(w http.ResponseWriter, r *http.Request, replay bool) {
	if !s.deadStore(w) {
		return
	}
	var a deadAction
	if !readJSON(w, r, &a) {
		return
	}
	n := 0
	if len(a.IDs) > 0 {
		n++
	}
	if a.Filter != nil {
		n++
	}
	if a.All {
		n++
	}
	if n != 1 {
		writeError(w, http.StatusBadRequest, "bad_request", `give exactly one of "ids": [...], "filter": {...} or "all": true`)
		return
	}
	f := deadFilter{}
	if a.Filter != nil {
		f = *a.Filter
		if err := f.check(); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "filter: "+err.Error())
			return
		}
	}
	var step time.Duration
	if replay {
		rs := a.Rate
		if rs == "" {
			rs = "10/s"
		}
		rate, err := policies.ParseRate(rs)
		if err != nil || rate.Paused() {
			writeError(w, http.StatusBadRequest, "bad_request", "rate: expected a rate above 0 such as 10/s, or unlimited")
			return
		}
		if !rate.Unlimited {
			step = time.Duration(float64(time.Second) / rate.PerSecond)
		}
	} else if a.Rate != "" {
		writeError(w, http.StatusBadRequest, "bad_request", "rate applies to replay only")
		return
	}
	route, target := r.PathValue("route"), r.PathValue("target")
	ctx := r.Context()
	res := deadResult{Done: true}
	at := s.cfg.Now()
	once := func(d *DeadLetter) error {
		if replay {
			err := s.cfg.Dead.Revive(ctx, route, target, d.Seq, at)
			if err == nil {
				res.Replayed++
				at = at.Add(step)
			}
			return err
		}
		err := s.cfg.Dead.Purge(ctx, route, target, d.Seq)
		if err == nil {
			res.Purged++
		}
		return err
	}
	act := func(d *DeadLetter) error { return tryWhileBusy(ctx, func() error { return once(d) }) }
	if len(a.IDs) > 0 {
		for _, id := range a.IDs {
			if !wellFormedID(id) {
				res.Invalid++
				continue
			}
			d, err := s.cfg.Dead.Get(route, target, id)
			if err == nil {
				err = act(&d)
			}
			switch {
			case errors.Is(err, ErrNotFound):
				res.NotFound = append(res.NotFound, id)
			case errors.Is(err, ErrNoTarget):
				s.deadError(w, err)
				return
			case err != nil:
				res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", id, err))
			}
		}
	} else {
		// The list is read ahead of the changes, a page at a time, by seq:
		// a letter replayed leaves the list and one that dies meanwhile is
		// taken if its seq is still ahead; none is taken twice.
		var failed error
		_, end, err := s.scan(route, target, 0, &f, func(d *DeadLetter) bool {
			if err := act(d); err != nil && !errors.Is(err, ErrNotFound) {
				failed = err
				return false
			}
			return ctx.Err() == nil
		})
		if err == nil {
			err = failed
		}
		if err != nil {
			if errors.Is(err, ErrNoTarget) {
				s.deadError(w, err)
				return
			}
			res.Errors = append(res.Errors, err.Error())
		}
		res.Done = end && err == nil && ctx.Err() == nil
	}
	verb := "purged"
	if replay {
		verb = "replayed"
	}
	s.log.Info("dead letters "+verb, "route", route, "target", target, "replayed", res.Replayed, "purged", res.Purged, "errors", len(res.Errors))
	status := http.StatusOK
	if len(res.Errors) > 0 {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, res)
}
