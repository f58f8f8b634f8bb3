package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// State is a snapshot of the running node: every target of every buffer
// and spillover route, the writer of each queue and the disk.
type State struct {
	Routes     []RouteState `json:"routes"`
	StoreBytes int64        `json:"store_bytes"`          // bytes of data in all segments
	FreeBytes  int64        `json:"free_bytes,omitempty"` // free space of the data directory's file system; -1 unknown
	Loops      LoopCounts   `json:"event_loops"`          // the public listener's event loops, since start
}

// LoopCounts is what the public listener's event loops did (server.
// event_loops): passthrough requests relayed and answered by a loop,
// answers streamed by a goroutine, buffer-route requests the loops stored
// and answered, connections handed to the goroutine-per-connection
// server. All zero without loops.
type LoopCounts struct {
	Relayed    uint64 `json:"relayed"`
	Streamed   uint64 `json:"streamed"`
	Stored     uint64 `json:"stored"`
	HandedOver uint64 `json:"handed_over"`
}

// RouteState is one route and its targets.
type RouteState struct {
	Name    string        `json:"name"`
	Mode    string        `json:"mode"`
	Retired bool          `json:"retired,omitempty"` // removed by a reload: accepts nothing, still drains
	Targets []TargetState `json:"targets,omitempty"`

	// Counts since start. Accepted and refused come from the metrics.
	Appended uint64       `json:"appended"`
	Expired  uint64       `json:"expired"` // undelivered messages deleted by the retention
	Writer   WriterCounts `json:"writer"`
}

// WriterCounts are a queue's group-commit figures since start.
type WriterCounts struct {
	Commits       uint64        `json:"commits"`
	Requests      uint64        `json:"requests"` // appends and state changes carried by the commits
	Time          time.Duration `json:"time_ns"`  // wall time committing: writes and fsyncs
	FailedCommits uint64        `json:"failed_commits"`
}

// TargetState is one target of a route, as the state API and the metrics
// show it.
type TargetState struct {
	Name     string `json:"name"`
	Backlog  uint64 `json:"backlog"`  // messages not finished: pending + retrying + in flight
	Pending  uint64 `json:"pending"`  // never attempted yet
	Retrying int    `json:"retrying"` // waiting for a retry
	InFlight int    `json:"in_flight"`
	// OldestPendingAge is how long the oldest message not yet finished for
	// the target has waited, in seconds; 0 with nothing pending.
	OldestPendingAge float64 `json:"oldest_pending_age_seconds"`
	// Expired counts messages the retention deleted before the target
	// finished them, since start.
	Expired uint64 `json:"expired"`

	Rate       float64 `json:"-"`           // requests per second in force: +Inf unlimited, 0 paused
	RateText   string  `json:"rate"`        // the same as text: "200/s", "unlimited", "0"
	RateReason string  `json:"rate_reason"` // policy, window, adaptive, operator, paused, operator_pause
	Paused     bool    `json:"paused"`      // by an operator
	// PausedUntil is the end of an operator's pause (nil: until resumed).
	PausedUntil   *time.Time `json:"paused_until,omitempty"`
	OperatorRate  string     `json:"operator_rate,omitempty"`
	OperatorUntil *time.Time `json:"operator_rate_until,omitempty"`
	Breaker       string     `json:"breaker"` // closed, open, half-open

	// DrainETA is when the backlog will have been delivered at the rate
	// in force; nil when unknown (paused with no end).
	DrainETA        *time.Time `json:"drain_eta,omitempty"`
	DrainETASeconds float64    `json:"drain_eta_seconds"` // -1 when unknown

	// Outcomes counts delivered, retried and dead by the class of the last
	// attempt's status since start ("none": no answer); zeros are left out.
	Outcomes []OutcomeCount `json:"outcomes,omitempty"`

	Delivered   uint64 `json:"delivered"`    // since start
	Retried     uint64 `json:"retried"`      // since start
	Dead        uint64 `json:"dead"`         // since start
	DeadLetters int    `json:"dead_letters"` // in the dead-letter list now (counted up to DeadLetterCountLimit)

	// Counts are the target's messages by phase (as GET .../counts gives
	// them for all time), recounted when older than 50 times what the
	// count took, between 1 s and CountsTTL; nil when the store does not
	// count.
	Counts *TargetCounts `json:"counts,omitempty"`
}

// CountsTTL is the longest the state's per-target counts are reused:
// counting reads every message's state, and is redone only when the last
// count is older than 50 times what it took (at least a second), so that
// the dashboard's sampling and the scrapes spend at most ~2% of a CPU on
// it; a queue of millions of messages shows counts up to this old.
const CountsTTL = 5 * time.Minute

// OutcomeCount is how many attempts ended as Outcome (delivered, retried,
// dead) with a status of Class (2xx, 5xx, ..., or none: no answer).
type OutcomeCount struct {
	Outcome string `json:"outcome"`
	Class   string `json:"class"`
	N       uint64 `json:"n"`
}

// DeadLetterCountLimit bounds the dead letters counted per target for the
// state: a larger list shows as this many.
const DeadLetterCountLimit = 100000

// Node is the running sluice the API reads; cmd/sluice adapts it.
type Node interface {
	// State returns a snapshot; it must not take the hot path's locks for long.
	State() State
	// Ready returns nil when the store is open, the drainers run and
	// appends are accepted; else why not.
	Ready() error
}

// ReloadResult says what a successful reload changed.
type ReloadResult struct {
	Changes       []string `json:"changes"`
	RestartNeeded []string `json:"restart_needed"` // changes left out: they take effect at the next start
}

// Reloader reloads the policy file. An error leaves the running policy in
// force; a *policies.Errors lists every problem with file:line.
type Reloader func(ctx context.Context) (ReloadResult, error)

// Config configures the admin server.
type Config struct {
	// Token is required as "Authorization: Bearer <token>" by every
	// endpoint but /healthz, /readyz and the dashboard's static files; ""
	// requires none (the policy allows that on loopback addresses only).
	Token    string
	Node     Node
	Controls *Controls
	Dead     DeadLetters // nil: the dead-letter endpoints answer 501 not_supported
	Messages Messages    // nil: the message list, counts and replay answer 501 not_supported
	Reload   Reloader    // nil: /v1/reload answers 501 not_supported
	Metrics  *Metrics
	Logger   *slog.Logger
	Now      func() time.Time // default time.Now
	// HistoryEvery is how often the dashboard's history is sampled while
	// Serve runs; default DefaultHistoryEvery. HistoryKeep of it is kept.
	HistoryEvery time.Duration
}

// Server is the admin HTTP server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	token [32]byte // sha256 of the token
	mux   *http.ServeMux
	srv   *http.Server
	hist  *history

	sampling sync.WaitGroup
}

// New builds the server; it does not listen.
func New(cfg Config) (*Server, error) {
	if cfg.Node == nil || cfg.Controls == nil || cfg.Metrics == nil {
		return nil, errors.New("admin: Config.Node, Controls and Metrics are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HistoryEvery <= 0 {
		cfg.HistoryEvery = DefaultHistoryEvery
	}
	s := &Server{cfg: cfg, log: cfg.Logger, token: sha256.Sum256([]byte(cfg.Token)), mux: http.NewServeMux(),
		hist: &history{max: max(1, int(HistoryKeep/cfg.HistoryEvery))}}
	s.routes()
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute, // a replay of many dead letters
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Handler returns the server's handler, for tests.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve serves on ln until Shutdown, and samples the dashboard's history
// meanwhile.
func (s *Server) Serve(ln net.Listener) error {
	ctx, cancel := context.WithCancel(context.Background())
	s.sampling.Go(func() { s.sampleLoop(ctx) })
	defer func() { cancel(); s.sampling.Wait() }()
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server, letting requests in progress finish within
// ctx; Serve returns once the sampling has stopped too.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *Server) routes() {
	open := func(pattern string, h http.HandlerFunc) { s.mux.Handle(pattern, h) }
	auth := func(pattern string, h http.HandlerFunc) { s.mux.Handle(pattern, s.authorized(h)) }

	open("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	open("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.cfg.Node.Ready(); err != nil {
			writeError(w, http.StatusServiceUnavailable, "not_ready", err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	// The dashboard's files carry no data; the page asks for the token and
	// sends it with each API call.
	open("GET /{$}", s.dashboard)
	open("GET /ui/", s.dashboard)

	auth("GET /metrics", promhttp.HandlerFor(s.cfg.Metrics.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}).ServeHTTP)
	auth("GET /v1/routes", s.getRoutes)
	auth("GET /v1/history", s.getHistory)
	auth("POST /v1/routes/{route}/targets/{target}/pause", s.pause)
	auth("POST /v1/routes/{route}/targets/{target}/resume", s.resume)
	auth("POST /v1/routes/{route}/targets/{target}/rate", s.setRate)
	auth("GET /v1/routes/{route}/targets/{target}/dead", s.listDead)
	auth("GET /v1/routes/{route}/targets/{target}/dead/{id}", s.showDead)
	auth("POST /v1/routes/{route}/targets/{target}/dead/replay", s.replayDead)
	auth("POST /v1/routes/{route}/targets/{target}/dead/purge", s.purgeDead)
	auth("GET /v1/routes/{route}/messages", s.listMessages)
	auth("GET /v1/routes/{route}/counts", s.getCounts)
	auth("POST /v1/routes/{route}/targets/{target}/replay", s.replayMessages)
	auth("POST /v1/reload", s.reload)
	// Anything else: a JSON 404 (after the token check, so that an
	// unauthenticated caller learns nothing about which paths exist).
	auth("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
	})
}

// authorized checks the bearer token in constant time (of the token's
// length too: digests are compared).
func (s *Server) authorized(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			sum := sha256.Sum256([]byte(got))
			if !ok || subtle.ConstantTimeCompare(sum[:], s.token[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="sluice admin"`)
				writeError(w, http.StatusUnauthorized, "unauthorized", "this endpoint needs the header Authorization: Bearer <admin.token>")
				return
			}
		}
		h(w, r)
	})
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

// errorDetail is every error's one shape: a code a client branches on, a
// message for people, and, for some, the bad query parameter or every
// problem of a refused policy.
type errorDetail struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Param   string   `json:"param,omitempty"`
	Errors  []string `json:"errors,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg}})
}

// notSupported answers a call this server cannot serve: the part is not
// configured, or its storage engine does not do it (ErrUnsupported).
func notSupported(w http.ResponseWriter, msg string) {
	writeError(w, http.StatusNotImplemented, "not_supported", msg)
}

// storeUnavailable is the answer to an error the store marks as an I/O
// failure (store.ErrIO): a disk that failed a read or write, or a NATS
// server that did not answer (no responders while a stream's leader is
// elected, a timeout). It may pass, so it is a 503 the client may retry
// (with Retry-After: 1), not a 500.
func storeUnavailable(err error) (int, errorDetail) {
	return http.StatusServiceUnavailable, errorDetail{Code: "store_unavailable", Message: err.Error()}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"encoding the reply failed"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// maxRequestBody bounds a request body of the admin API.
const maxRequestBody = 1 << 20

// readJSON decodes an optional JSON body into v (an empty body leaves v as
// it is). It answers 400 itself and reports false on bad input; the error
// names what is wrong and never echoes the body.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body exceeds %d bytes", maxRequestBody))
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return true
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := "the body is not valid JSON for this endpoint"
		var ute *json.UnmarshalTypeError
		var se *json.SyntaxError
		var pe *time.ParseError
		switch {
		case errors.As(err, &pe):
			msg = "a time is not RFC 3339: expected such as 2026-12-05T06:00:00Z"
		case errors.As(err, &ute):
			msg = fmt.Sprintf("field %q: expected %s", ute.Field, ute.Type)
		case errors.As(err, &se):
			msg = fmt.Sprintf("invalid JSON at byte %d", se.Offset)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			msg = "the body has a field this endpoint does not take (see the README's admin API)"
		}
		writeError(w, http.StatusBadRequest, "bad_request", msg)
		return false
	}
	return true
}

func (s *Server) getRoutes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.state())
}

// state is the node's state with the operators' overrides filled in.
func (s *Server) state() State {
	st := s.cfg.Node.State()
	for i := range st.Routes {
		rt := &st.Routes[i]
		for j := range rt.Targets {
			t := &rt.Targets[j]
			if o, ok := s.cfg.Controls.Get(rt.Name, t.Name); ok {
				if o.Paused {
					t.Paused = true
					if !o.PausedUntil.IsZero() {
						u := o.PausedUntil
						t.PausedUntil = &u
					}
				}
				if o.Rate != "" {
					t.OperatorRate = o.Rate
					if !o.RateUntil.IsZero() {
						u := o.RateUntil
						t.OperatorUntil = &u
					}
				}
			}
		}
	}
	return st
}

type controlBody struct {
	Until *time.Time `json:"until"`
	Rate  *string    `json:"rate"`
}

func (s *Server) control(w http.ResponseWriter, r *http.Request, what string) {
	var body controlBody
	if !readJSON(w, r, &body) {
		return
	}
	route, target := r.PathValue("route"), r.PathValue("target")
	var until time.Time
	if body.Until != nil {
		until = *body.Until
	}
	var o Override
	var err error
	switch what {
	case "pause":
		o, err = s.cfg.Controls.Pause(route, target, until)
	case "resume":
		o, err = s.cfg.Controls.Resume(route, target)
	case "rate":
		switch {
		case body.Rate == nil:
			writeError(w, http.StatusBadRequest, "bad_request", `field "rate" is required: "100/s", "0" (paused), "unlimited", or "policy" to go back to the policy's rate`)
			return
		case *body.Rate == "policy":
			o, err = s.cfg.Controls.ResetRate(route, target)
		default:
			o, err = s.cfg.Controls.SetRate(route, target, *body.Rate, until)
		}
	}
	switch {
	case errors.Is(err, ErrNoTarget):
		writeError(w, http.StatusNotFound, "no_target", err.Error())
		return
	case err != nil && strings.HasPrefix(err.Error(), "operator controls:"):
		s.log.Error("operator control not saved; not applied", "route", route, "target", target, "err", err)
		writeError(w, http.StatusInternalServerError, "not_saved", err.Error()+"; nothing was changed")
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	s.log.Info("operator control", "action", what, "route", route, "target", target, "paused", o.Paused, "rate", o.Rate)
	writeJSON(w, http.StatusOK, o)
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request)   { s.control(w, r, "pause") }
func (s *Server) resume(w http.ResponseWriter, r *http.Request)  { s.control(w, r, "resume") }
func (s *Server) setRate(w http.ResponseWriter, r *http.Request) { s.control(w, r, "rate") }

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Reload == nil {
		notSupported(w, "reload is not supported by this server")
		return
	}
	res, err := s.cfg.Reload(r.Context())
	if err != nil {
		body := errorBody{Error: errorDetail{Code: "invalid_policy", Message: "the policy was not reloaded; the running policy stays in force: " + err.Error()}}
		for _, line := range strings.Split(err.Error(), "\n") {
			if line != "" {
				body.Error.Errors = append(body.Error.Errors, line)
			}
		}
		writeJSON(w, http.StatusUnprocessableEntity, body)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
