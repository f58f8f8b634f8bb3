package drain

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/internal/netio"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// Source is what a drainer needs from the store: one target's view of a
// route's queue. *store.Consumer implements it.
type Source interface {
	// Fetch returns up to max messages to attempt now; each is in flight
	// until Complete or Release.
	Fetch(max int, now time.Time) ([]*store.Delivery, error)
	// Ready is signalled after new messages are committed.
	Ready() <-chan struct{}
	// NextRetry returns when the earliest retry not in flight is due.
	NextRetry() (time.Time, bool)
	// Complete records the outcome of an attempt.
	Complete(ctx context.Context, d *store.Delivery, out store.Outcome) error
	// Release gives back a fetched message that was not attempted.
	Release(d *store.Delivery)
}

// Config configures a Drainer.
type Config struct {
	Route string // the route's name, for logs and errors

	// Target is the downstream and its pace. URL and Name are required. Zero
	// values of the other fields get the policy file's defaults: Concurrency
	// 16, Timeout 10s, Burst max(1, ceil(rate/10)), Retry.MaxAttempts 10,
	// Retry.Initial 500ms, Retry.Max 5m (at least Initial), and Retry.On (when
	// it is entirely zero) 5xx, 408, 425, 429, timeout and connect.
	// The zero Rate means paused: set policies.Rate{Unlimited: true} or a rate.
	Target policies.Target

	// Logger receives one record per failed attempt and per state change,
	// with the attributes route, target, id, attempt, status and err; never
	// message bodies. Successful deliveries are logged at Debug. Default
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock for time windows, the rate limiter, attempt times and
	// retry schedules. It must advance with real time (timers are real); a
	// test may shift it. Default time.Now.
	Now func() time.Time
	// Rand returns the backoff jitter, in [0, 1). It is called under a lock,
	// so it need not be safe for concurrent use. Default math/rand/v2.Float64.
	Rand func() float64
	// TLSConfig is used for https targets (for example, to trust a private
	// CA). Default: the system's roots, server name from the URL.
	TLSConfig *tls.Config

	// CallbackHeader is the route's callback_header: the stored request
	// header that names a URL to tell each final outcome (delivered or dead)
	// of this target; "" = no callbacks. It is never sent to the target.
	CallbackHeader string
	// Callbacks is the allow-list a callback URL must match when it is
	// called (it was checked at ingest too; the policy may have changed
	// since). Required with CallbackHeader.
	Callbacks *policies.Callbacks

	// NoLoop makes every attempt in a goroutine of its own with the
	// fasthttp client, never on a delivery loop (loop_linux.go; the policy's
	// server.event_loops: 0).
	NoLoop bool
}

const (
	// pollInterval is the safety net: an idle drainer fetches at least this often.
	pollInterval = 500 * time.Millisecond
	// fetchErrorPause is how long the drainer waits after a failed Fetch.
	fetchErrorPause = time.Second
	// recordTimeout bounds the wait to hand an outcome to the store.
	recordTimeout = time.Minute
	// recordWindow bounds the attempts whose HTTP call is over and whose
	// outcome waits for the store's commit. They share commits (and
	// fsyncs), so the window must hold what arrives during one commit at
	// full speed (~100k/s x ~2 ms); their bodies are dropped once sent, so
	// each costs its headers.
	recordWindow = 1024
	// maxResponseBody bounds the response body Forward reads whole (a
	// replay streams its answer and keeps at most capture_response.max_bytes).
	maxResponseBody = 16 << 20
)

// Drainer delivers one target's messages. Create it with New, start it with
// Run; Pause, Resume, SetRate, ResetRate and Stats may be called at any time
// from any goroutine.
type Drainer struct {
	// halt is closed when the current Run stops fetching: an outcome that
	// cannot be recorded is retried until then (see record).
	halt   atomic.Pointer[chan struct{}]
	route  string
	noLoop bool            // Config.NoLoop
	target policies.Target // defaulted; never changed after New
	src    Source
	log    *slog.Logger
	now    func() time.Time
	ep     endpoint
	client *fasthttp.HostClient

	rndMu sync.Mutex
	rnd   func() float64

	mu     sync.Mutex
	base   policies.Rate // the rate outside windows: Target.Rate or SetRate's
	paused bool          // Pause() in force

	control atomic.Uint64 // bumped on every control call
	kick    chan struct{} // wakes the run loop; capacity 1
	running atomic.Bool

	readyOnce sync.Once
	ready     chan struct{} // closed when Run first applies the rate (Ready)

	delivered, retried, dead, attempts, unrecorded atomic.Uint64
	byClass                                        [3][6]atomic.Uint64 // Stats.ByClass
	parked                                         atomic.Uint64       // ordering: deliveries parked behind their key
	sending                                        atomic.Int64

	// Shared with TryDirect (direct.go): the run loop's token bucket (nil
	// while unlimited or not running) and the concurrency slots taken by
	// the run loop and by direct calls together, at most Concurrency.
	lim                  atomic.Pointer[rate.Limiter]
	slots                atomic.Int64
	forwarded, fwdFailed atomic.Uint64

	// Published by the run loop for Stats.
	adaptiveRate atomic.Uint64 // math.Float64bits of the adaptive rate
	cuts         atomic.Uint64 // adaptive cuts
	breakerState atomic.Int32  // BreakerState
	breakerOpens atomic.Uint64

	cb callbacks // delivery callbacks (callback.go)
}

// New checks cfg, applies defaults and returns a Drainer reading from src.
// It opens no connection.
func New(cfg Config, src Source) (*Drainer, error) {
	t := cfg.Target
	fail := func(format string, args ...any) error {
		return fmt.Errorf("drain: route %q: target %q: %s", cfg.Route, t.Name, fmt.Sprintf(format, args...))
	}
	switch {
	case src == nil:
		return nil, fail("no source")
	case t.Name == "":
		return nil, fail("target has no name")
	case t.URL == nil:
		return nil, fail("target has no URL")
	case t.URL.Scheme != "http" && t.URL.Scheme != "https":
		return nil, fail("URL %q: scheme must be http or https", t.URL.Redacted())
	case t.URL.Hostname() == "":
		return nil, fail("URL %q has no host", t.URL.Redacted())
	case !validRate(t.Rate):
		return nil, fail("invalid rate %v", t.Rate.PerSecond)
	case cfg.CallbackHeader != "" && cfg.Callbacks == nil:
		return nil, fail("CallbackHeader %q without an allow-list (Callbacks)", cfg.CallbackHeader)
	}
	if errs := t.Validate(); len(errs) > 0 {
		// The parser's checks and wording (policies owns them), for a
		// Target built in code.
		return nil, fail("%s: %s", errs[0].Field, errs[0].Msg)
	}
	if t.Ordering != nil || t.Fairness != nil {
		if _, ok := src.(Parker); !ok {
			return nil, fail("ordering and fairness need a source that can park messages (a *store.Consumer)")
		}
	}
	for i, w := range t.Windows {
		if !validRate(w.Rate) {
			return nil, fail("window %d: invalid rate %v", i, w.Rate.PerSecond)
		}
	}
	if a := t.Adaptive; a != nil {
		switch {
		case a.MinRate.Unlimited || !validRate(a.MinRate) || a.MinRate.PerSecond <= 0:
			return nil, fail("adaptive: min_rate must be a rate above 0, not unlimited")
		case a.Increase.Unlimited || !validRate(a.Increase):
			return nil, fail("adaptive: invalid increase %v", a.Increase)
		case a.Decrease < 0 || a.Decrease >= 1 || math.IsNaN(a.Decrease):
			return nil, fail("adaptive: decrease %v is not in (0, 1)", a.Decrease)
		}
	}
	// The policy's defaults, for a Target built in code; policies owns them.
	t = t.WithDefaults()
	d := &Drainer{
		route:  cfg.Route,
		noLoop: cfg.NoLoop,
		target: t,
		src:    src,
		log:    cfg.Logger,
		now:    cfg.Now,
		rnd:    cfg.Rand,
		ep:     newEndpoint(t.URL),
		base:   t.Rate,
		kick:   make(chan struct{}, 1),
		ready:  make(chan struct{}),
	}
	d.ep.headers = t.Headers
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("route", cfg.Route, "target", t.Name)
	if d.now == nil {
		d.now = time.Now
	}
	if d.rnd == nil {
		d.rnd = rand.Float64
	}
	if cfg.CallbackHeader != "" {
		d.ep.callback = cfg.CallbackHeader
		d.cb.init(cfg)
	}
	d.client = d.hostClient(cfg.TLSConfig)
	return d, nil
}

// hostClient returns the fasthttp client the attempts that are not made on
// the delivery loop are made with (and, with its own transport, the reader
// of the answers the loop does not read itself: loop_linux.go).
func (d *Drainer) hostClient(tlsConfig *tls.Config) *fasthttp.HostClient {
	t := &d.target
	return &fasthttp.HostClient{
		Addr:                          d.ep.addr,
		IsTLS:                         d.ep.scheme == "https",
		TLSConfig:                     tlsConfig,
		MaxConns:                      t.Concurrency,
		MaxConnWaitTimeout:            t.Timeout,
		WriteTimeout:                  t.Timeout, // also bounds dialling and the TLS handshake
		MaxResponseBodySize:           maxResponseBody,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
		// Transport errors become last_error (status API) and log lines:
		// without this, fasthttp quotes a snippet of the answer (Set-Cookie
		// and all) in them.
		SecureErrorLogMessage: true,
		// One attempt is one request: fasthttp must not resend on its own,
		// or the target could see more than the rate allows.
		MaxIdemponentCallAttempts: 1,
		RetryIfErr:                func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
		// fasthttp's own dial, its connections wrapped so that the
		// deadlines it sets on every request cost no timer update and,
		// on Linux, reads and writes are raw system calls (netio).
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			if timeout <= 0 { // a call with no deadline (none today)
				timeout = t.Timeout
			}
			c, err := fasthttp.DialTimeout(addr, timeout)
			if err != nil {
				return nil, err
			}
			return netio.NewConn(c), nil
		},
	}
}

func validRate(r policies.Rate) bool {
	return r.Unlimited || (r.PerSecond >= 0 && !math.IsNaN(r.PerSecond) && !math.IsInf(r.PerSecond, 0))
}

// Target returns the target as the drainer uses it, with defaults applied.
func (d *Drainer) Target() policies.Target { return d.target }

// Pause stops fetching and sending until Resume; attempts already sent
// finish. It takes effect at once, whatever the rate and windows say.
func (d *Drainer) Pause() {
	d.mu.Lock()
	d.paused = true
	d.mu.Unlock()
	d.changed("paused")
}

// Resume undoes Pause: the rate in force applies again.
func (d *Drainer) Resume() {
	d.mu.Lock()
	d.paused = false
	d.mu.Unlock()
	d.changed("resumed")
}

// SetRate replaces the target's base rate (Target.Rate, the rate outside
// every window) until ResetRate. Windows still win inside their hours: an
// operator who slows a target at 14:00 does not change what its night window
// allows. Pause and Resume are separate and win over both. SetRate takes
// effect at once; the bucket keeps the tokens it holds (at most Burst).
// A negative or NaN rate is taken as 0 (paused).
func (d *Drainer) SetRate(r policies.Rate) {
	if !validRate(r) {
		d.log.Warn("SetRate: invalid rate; pausing instead", "rate", r.PerSecond)
		r = policies.Rate{}
	}
	d.mu.Lock()
	d.base = r
	d.mu.Unlock()
	d.changed("rate set", "rate", r.String())
}

// ResetRate undoes SetRate: Target.Rate is the base rate again.
func (d *Drainer) ResetRate() {
	d.mu.Lock()
	d.base = d.target.Rate
	d.mu.Unlock()
	d.changed("rate reset", "rate", d.target.Rate.String())
}

func (d *Drainer) changed(msg string, args ...any) {
	d.control.Add(1)
	d.wake()
	d.log.Info(msg, args...)
}

// wake makes the run loop look again (fetch, timers) without waiting.
func (d *Drainer) wake() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// rateAt returns the rate in force at now; paused is true when it is zero
// (by Pause, SetRate, the base rate or a window). base is the base rate.
func (d *Drainer) rateAt(now time.Time) (r policies.Rate, paused bool, base policies.Rate) {
	d.mu.Lock()
	base, manual := d.base, d.paused
	d.mu.Unlock()
	if manual {
		return policies.Rate{}, true, base
	}
	t := d.target
	t.Rate = base
	r = t.RateAt(now)
	return r, r.Paused(), base
}

// Stats is a snapshot of a drainer's counters since New.
type Stats struct {
	Delivered uint64 // messages recorded as delivered
	// Forwarded counts requests Forward sent that the target accepted (2xx),
	// never stored; ForwardFailed the Forward calls that did not.
	Forwarded, ForwardFailed uint64
	Retried                  uint64 // attempts that failed and were rescheduled
	Dead                     uint64 // messages recorded as dead
	Attempts                 uint64 // HTTP attempts started
	// Unrecorded counts outcomes the store did not take (for example, closed
	// at shutdown, or a failed write); those messages are given back when
	// Run returns and attempted again by the next Run or after a restart.
	Unrecorded uint64
	// Parked counts deliveries parked behind an earlier message of their
	// key (Target.Ordering), or behind the full ready queue of their key
	// (Target.Fairness); a parked message spends no attempt.
	Parked uint64
	// ByClass splits Delivered, Retried and Dead (the first index: the
	// Outcome* constants) by the class of the last attempt's status: index
	// 0 for no answer (timeout, connection failure, a damaged record), 1
	// to 5 for 1xx to 5xx.
	ByClass  [3][6]uint64
	InFlight int     // HTTP requests open to the target now; at most Concurrency
	Rate     float64 // requests per second in force now: +Inf if unlimited, 0 if paused
	Paused   bool    // Pause is in force

	// AdaptiveRate is the rate the adaptive controller allows now, at most
	// Rate (the ceiling); the limiter runs at it. 0 if Target.Adaptive is
	// nil; +Inf while the ceiling is unlimited. It is updated by the run
	// loop, at every wake-up.
	AdaptiveRate float64
	AdaptiveCuts uint64 // times the adaptive rate was cut

	Breaker      BreakerState // the circuit breaker's state
	BreakerOpens uint64       // times it opened (or re-opened after a failed probe)

	// CallbacksSent counts delivery callbacks answered 2xx; CallbacksFailed
	// those given up (after their tries, refused by the allow-list, or
	// dropped because too many were under way).
	CallbacksSent, CallbacksFailed uint64
}

// Outcomes, the first index of Stats.ByClass.
const (
	OutcomeDelivered = iota
	OutcomeRetried
	OutcomeDead
)

// countClass counts an outcome by its status class (0: no answer).
func (d *Drainer) countClass(outcome, status int) {
	class := 0
	if status >= 100 && status <= 599 {
		class = status / 100
	}
	d.byClass[outcome][class].Add(1)
}

// Ready is closed once Run has started and applied the rate in force for the
// first time: from then on TryDirect can succeed. A node opens its listener
// after its drainers are ready, so a spillover route does not store the
// first requests only because its drainer had not been scheduled yet.
func (d *Drainer) Ready() <-chan struct{} { return d.ready }

// Stats returns the drainer's counters and the rate in force.
func (d *Drainer) Stats() Stats {
	r, paused, _ := d.rateAt(d.now())
	d.mu.Lock()
	manual := d.paused
	d.mu.Unlock()
	st := Stats{
		Delivered:     d.delivered.Load(),
		Forwarded:     d.forwarded.Load(),
		ForwardFailed: d.fwdFailed.Load(),
		Retried:       d.retried.Load(),
		Dead:          d.dead.Load(),
		Attempts:      d.attempts.Load(),
		Unrecorded:    d.unrecorded.Load(),
		Parked:        d.parked.Load(),
		InFlight:      int(d.sending.Load()),
		Paused:        manual,

		AdaptiveCuts: d.cuts.Load(),
		Breaker:      BreakerState(d.breakerState.Load()),
		BreakerOpens: d.breakerOpens.Load(),

		CallbacksSent:   d.cb.sent.Load(),
		CallbacksFailed: d.cb.failed.Load(),
	}
	for i := range d.byClass {
		for j := range d.byClass[i] {
			st.ByClass[i][j] = d.byClass[i][j].Load()
		}
	}
	if d.target.Adaptive != nil {
		st.AdaptiveRate = math.Float64frombits(d.adaptiveRate.Load())
	}
	switch {
	case paused:
		st.Rate = 0
	case r.Unlimited:
		st.Rate = math.Inf(1)
	default:
		st.Rate = r.PerSecond
	}
	return st
}

// Run delivers until ctx is cancelled. Then it stops fetching, waits for the
// attempts in flight (each bounded by Target.Timeout), records their
// outcomes, closes its idle connections and returns nil. It returns an error
// if the source is closed under it (after the same wait), or at once if Run
// is already running. Run may be called again after it returns; the token
// bucket then starts full again.
func (d *Drainer) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return fmt.Errorf("drain: route %q: target %q: Run is already running", d.route, d.target.Name)
	}
	defer d.running.Store(false)
	r := &runner{d: d, events: make(chan event, 4*d.target.Concurrency), br: newBreaker(d.target.Breaker),
		work: make(chan job, d.target.Concurrency), quit: make(chan struct{}),
		recq: make(chan recItem, d.target.Concurrency+recordWindow), recb: make(chan *[]recItem, 4), recDone: make(chan struct{})}
	go r.recorder()
	if d.useLoop() {
		if err := r.startLoops(); err != nil {
			d.log.Warn("cannot start the delivery loops; attempts are made by goroutines", "err", err)
		}
	}
	if d.target.Adaptive != nil {
		r.ad = newAIMD(d.target.Adaptive)
	}
	r.feed = newFeeder(r)
	r.watch, _ = r.feed.(watcher)
	var leftovers sync.WaitGroup
	lctx, lcancel := context.WithCancel(ctx)
	if p, ok := d.src.(Parker); ok && d.target.Ordering == nil && d.target.Fairness == nil {
		leftovers.Go(func() { d.unparkLeftovers(lctx, p) })
	}
	halt := make(chan struct{})
	d.halt.Store(&halt)
	err := r.loop(ctx)
	r.feed.release() // nothing is fetched from here on
	close(halt)
	lcancel()
	leftovers.Wait()
	r.stopping = true
	d.lim.Store(nil)
	// Every attempt goroutine sends two events; wait for the last of them.
	for r.outstanding > 0 {
		r.handle(<-r.events)
	}
	close(r.quit)
	r.workers.Wait()
	for _, l := range r.lps {
		l.close()
	}
	close(r.recq) // empty: nothing is outstanding
	<-r.recDone
	r.releaseUnrecorded()
	d.cb.wait(d.log) // the callbacks of those outcomes
	d.client.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("drain: route %q: target %q: %w", d.route, d.target.Name, err)
	}
	return nil
}

// useLoop reports whether the attempts are made on a delivery loop
// (loop_linux.go): on Linux, unless Config.NoLoop, for a target whose
// attempts are single requests (not batches) over http:// and whose answers
// are not captured.
func (d *Drainer) useLoop() bool {
	t := &d.target
	return loopSupported && !d.noLoop && d.ep.scheme == "http" && t.Batch == nil && t.CaptureResponse == nil
}

// event is what an attempt goroutine tells the run loop.
type event struct {
	recorded bool // false: the HTTP call is over (its slot is free); true: the outcome is recorded (or failed)
	n        int  // with recorded true and no dl: how many outcomes were recorded (0 means 1)
	retrying bool // recorded as Retrying: the retry schedule changed

	// With recorded true, for ordering: the message and whether its
	// outcome is final (delivered or dead) and was recorded.
	dl       *store.Delivery
	final    bool
	recordOK bool

	// With recorded true: the messages whose outcome could not be
	// recorded (Complete failed); they are still in flight in the store.
	unrecorded []*store.Delivery

	// With recorded false:
	res     result // what the HTTP attempt came to
	probe   bool   // the attempt was the breaker's probe
	chained bool   // the worker kept the slot and started the next message from the chain
	none    bool   // no HTTP request was made (every message of a batch was refused)

	// The delivery loop's events of one turn, in order, instead of the
	// above; from eventBatches, and put back there once handled.
	batch *[]event
}

// Batches of the delivery loop's events and outcomes, reused: a turn's
// worth handed over fresh each time cost ~1.5 KB of garbage a message.
var (
	eventBatches  = sync.Pool{New: func() any { return new([]event) }}
	recordBatches = sync.Pool{New: func() any { return new([]recItem) }}
)

// runner is the state of one Run, owned by the goroutine running it.
type runner struct {
	d      *Drainer
	events chan event

	sending     int // attempts holding a concurrency slot (HTTP under way)
	outstanding int // attempts started whose outcome is not yet recorded

	lim        *rate.Limiter // nil while the rate is unlimited
	limRate    float64       // the limiter's rate, as last set
	cur        policies.Rate // rate in force (the ceiling), as last applied
	curPaused  bool
	applied    bool
	nextChange time.Time     // next change of the windowed rate; zero if none
	changeBase policies.Rate // the base rate nextChange was computed with
	changeOK   bool          // nextChange is computed

	ad    *aimd    // nil unless Target.Adaptive
	br    *breaker // always
	feed  feeder   // the target's delivery mode (feeder.go)
	watch watcher  // feed, if it is one; else nil

	stopping bool // the loop has returned; Run waits for what is outstanding

	// The plain feeder's chain (chain.go), which workers take the next
	// message from; nil for the other modes.
	ch *chain

	// Messages whose outcome could not be recorded: in flight in the store
	// (so not fetched again) until Run ends and gives them back.
	unrecorded []*store.Delivery

	// Worker goroutines that make the attempts (see worker), and the
	// recorder that records their outcomes (see recorder).
	work    chan job     // attempts for the workers; capacity Concurrency
	lps     []*loop      // when not empty, the attempts are made on these instead (loop_linux.go)
	alive   atomic.Int32 // workers running
	quit    chan struct{}
	workers sync.WaitGroup
	recq    chan recItem
	recb    chan *[]recItem // the delivery loop's, a turn's outcomes at once (from recordBatches)
	recDone chan struct{}
}

func (r *runner) handle(ev event) {
	if ev.batch != nil {
		for _, e := range *ev.batch {
			r.handle(e)
		}
		clear(*ev.batch)
		*ev.batch = (*ev.batch)[:0]
		eventBatches.Put(ev.batch)
		return
	}
	if ev.recorded {
		r.outstanding -= max(ev.n, 1)
		r.unrecorded = append(r.unrecorded, ev.unrecorded...)
		if r.watch != nil && ev.dl != nil {
			r.watch.recorded(ev.dl, ev.recordOK, ev.final, r.stopping)
		}
		return
	}
	if ev.chained {
		r.outstanding++ // the slot carries on with another message
	} else {
		r.sending--
		r.d.slots.Add(-1)
	}
	if ev.none {
		return // nothing was sent: no news about the target
	}
	d := r.d
	now := d.now()
	if r.ad != nil && r.applied && !r.curPaused && !r.cur.Unlimited {
		if r.ad.Observe(now, ev.res.at, r.ad.congested(&ev.res), r.cur.PerSecond) {
			d.cuts.Add(1)
			d.log.Info("adaptive rate cut", "rate", r.ad.rate, "status", ev.res.status)
		}
	}
	if st, changed := r.br.Done(now, failed(&ev.res), ev.probe); changed {
		r.publishBreaker()
		switch st {
		case BreakerOpen:
			d.log.Warn("circuit breaker open: sending nothing until the cooldown ends",
				"cooldown", r.br.cur, "until", r.br.openUntil)
		case BreakerClosed:
			d.log.Info("circuit breaker closed: the target answers again")
		}
	}
}

func (r *runner) publishBreaker() {
	r.d.breakerState.Store(int32(r.br.state))
	r.d.breakerOpens.Store(r.br.opens)
}

// applyRate brings the limiter to the rate in force at now. It reports
// whether the drainer is paused and whether it was paused before.
func (r *runner) applyRate(now time.Time) (paused, wasPaused bool) {
	d := r.d
	cur, paused, base := d.rateAt(now)
	if !r.changeOK || base != r.changeBase || (!r.nextChange.IsZero() && !now.Before(r.nextChange)) {
		t := d.target
		t.Rate = base
		r.nextChange, r.changeBase, r.changeOK = t.NextChange(now), base, true
		if !r.nextChange.IsZero() && !r.nextChange.After(now) {
			r.nextChange = now.Add(time.Second) // defensive: never wake in a loop
		}
	}
	wasPaused = r.curPaused
	eff := cur.PerSecond // the limiter's rate: the ceiling, or the adaptive rate under it
	if r.ad != nil && !paused {
		ceiling := cur.PerSecond
		if cur.Unlimited {
			ceiling = math.Inf(1)
		}
		eff = r.ad.Rate(now, ceiling)
		d.adaptiveRate.Store(math.Float64bits(eff))
	}
	changed := !r.applied || cur != r.cur || paused != r.curPaused
	switch {
	case paused:
		// Leave the limiter as it is: nothing takes tokens while paused, and
		// it refills at the old rate up to Burst, which the guarantee allows.
	case cur.Unlimited:
		r.lim = nil
	case r.lim == nil:
		r.lim = rate.NewLimiter(rate.Limit(eff), d.target.Burst) // starts full: Burst
		r.limRate = eff
	case eff != r.limRate:
		r.lim.SetLimitAt(now, rate.Limit(eff))
		r.limRate = eff
	}
	d.lim.Store(r.lim)
	if r.applied && changed {
		d.log.Info("rate in force changed", "rate", cur.String(), "paused", paused)
	}
	r.cur, r.curPaused, r.applied = cur, paused, true
	return paused, wasPaused
}

// tokens returns how many attempts the bucket allows at now, at most free,
// and if none, how long until the next token.
func (r *runner) tokens(now time.Time, free int) (int, time.Duration) {
	if r.lim == nil {
		return free, 0
	}
	tok := r.lim.TokensAt(now)
	if tok >= 1 {
		return min(free, int(tok)), 0
	}
	secs := (1 - tok) / float64(r.lim.Limit())
	// +1µs: a timer that fires a hair early must not find 0.9999 tokens.
	return 0, time.Duration(math.Ceil(secs*1e9)) + time.Microsecond
}

// loop is the run loop: it owns the limiter, the breaker, the slots, the
// timers and every call to Fetch and Release but the chain's. Each turn it
// brings the rate and the breaker up to date, prepares the target's feeder
// (feeder.go) and runs one round of it, which fetches and starts attempts;
// then it waits for news (an event, new messages, a timer, a control call).
// It returns when ctx is done (nil) or the source is closed.
func (r *runner) loop(ctx context.Context) error {
	d := r.d
	conc := d.target.Concurrency
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	idle := false // the last Fetch came back short: wait for news before fetching again
	checkRetry := true
	var retryAt, lastFetch, fetchAfter time.Time
	hasRetry := false
	for {
		// Read before the rate: a control call from here on makes start give
		// this round's messages back instead of sending them at a stale rate.
		gen := d.control.Load()
		now := d.now()
		paused, wasPaused := r.applyRate(now)
		d.readyOnce.Do(func() { close(d.ready) })
		if err := ctx.Err(); err != nil {
			return nil
		}
		if wasPaused && !paused {
			idle = false
		}
		var wake time.Time // earliest timer deadline; zero: none
		allow, openUntil := r.br.Allow(now)
		r.publishBreaker()
		if !openUntil.IsZero() {
			wake = openUntil
		}
		send := !paused && allow != 0
		t := turn{now: now, gen: gen, idle: idle, fast: allow < 0 && r.lim == nil, until: r.nextChange}
		if send {
			r.feed.prepare(t)
		} else {
			r.feed.release() // held back: back to the queue, not in flight
		}
		if send && (!idle || r.feed.holding()) && !now.Before(fetchAfter) {
			t.free = min(conc-int(d.slots.Load()), conc+recordWindow-r.outstanding) // direct calls hold slots too
			if allow >= 0 {
				t.free = min(t.free, allow)
			}
			// One round of the target's delivery mode: the feeder
			// fetches, starts attempts on the free slots and says what
			// the loop should do next.
			rd := r.feed.round(t)
			if rd.fetched {
				lastFetch = now
			}
			if rd.err != nil {
				if errors.Is(rd.err, store.ErrClosed) {
					return rd.err
				}
				d.log.Error(cmp.Or(rd.errMsg, "fetch failed; trying again shortly"), "err", rd.err)
				fetchAfter = now.Add(fetchErrorPause)
				continue
			}
			if rd.again {
				idle = false
				continue
			}
			if rd.more {
				continue
			}
			if rd.short {
				idle, checkRetry = true, true
			}
			if !rd.wake.IsZero() {
				wake = earliest(wake, rd.wake)
			}
		}
		if send {
			if now.Before(fetchAfter) {
				wake = earliest(wake, fetchAfter)
			}
			if idle {
				if checkRetry {
					retryAt, hasRetry = d.src.NextRetry()
					checkRetry = false
					if r.watch != nil && !r.watch.retryIdle(hasRetry) {
						checkRetry = true
					}
					if hasRetry && !retryAt.After(lastFetch) {
						// Due at the last Fetch, yet not returned (an entry the
						// store cannot load): do not spin on it; the poll retries.
						hasRetry = false
					}
				}
				if hasRetry {
					wake = earliest(wake, retryAt)
				}
				wake = earliest(wake, now.Add(pollInterval))
			}
		}
		if !r.nextChange.IsZero() {
			wake = earliest(wake, r.nextChange)
		}
		if r.watch != nil {
			woke, at := r.watch.tick(now)
			if !at.IsZero() {
				wake = earliest(wake, at)
			}
			if woke {
				idle = false
				continue
			}
		}
		var timerC <-chan time.Time
		if !wake.IsZero() {
			timer.Reset(max(wake.Sub(now), 0))
			timerC = timer.C
		}
		var ready <-chan struct{}
		if send {
			ready = d.src.Ready()
		}
		select {
		case <-ctx.Done():
		case <-d.kick:
			idle = false
		case ev := <-r.events:
			// Take every event already waiting, so that one round (one
			// Fetch) serves all the slots they freed.
			for n := len(r.events); ; n-- {
				r.handle(ev)
				if ev.retrying {
					checkRetry = true
				}
				if n <= 0 {
					break
				}
				ev = <-r.events
			}
		case <-ready:
			idle = false
		case <-timerC:
			idle = false
		}
		timer.Stop()
	}
}

// releaseUnrecorded gives back, at Run's end, the messages whose outcome
// could not be recorded. A failed Complete committed nothing (the store
// reports an error for a write that failed and was rolled back, or for a
// request its writer never took; and should a failed write have reached the
// disk after all, Fetch goes by what is committed), so each is as it was
// before its attempt: a first
// attempt below the cursor, which Release rewinds to it, or a retry in the
// schedule. The next Run, in this process, fetches them again, as one after
// a restart would. Held in flight, they would be invisible to it: its
// orderer would take their keys as free and send their successors first.
// While this Run lasts they stay in flight, so a store that cannot write
// does not have them sent again and again.
func (r *runner) releaseUnrecorded() {
	if len(r.unrecorded) == 0 {
		return
	}
	r.d.log.Warn("giving back the messages whose outcome could not be recorded; they are attempted again",
		"messages", len(r.unrecorded))
	for _, dl := range r.unrecorded {
		r.d.src.Release(dl)
	}
	r.unrecorded = nil
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// start takes a token and a slot for dl and sends it in a new goroutine. It
// gives dl back (and returns false) if a control call came in since gen or
// the bucket is empty.
func (r *runner) start(dl *store.Delivery, now time.Time, gen uint64) bool {
	if !r.take(now, gen) {
		r.d.src.Release(dl)
		return false
	}
	r.launch(dl, now)
	return true
}

// startAll starts the deliveries of ds in turn, and gives back the rest
// once one cannot start (see start). admit, when not nil, decides first
// whether each is started at all (false: it is the admitter's now); its
// error gives back the rest and is returned.
func (r *runner) startAll(ds []*store.Delivery, now time.Time, gen uint64, admit func(*store.Delivery) (bool, error)) error {
	for i, dl := range ds {
		if admit != nil {
			send, err := admit(dl)
			if err != nil {
				for _, rest := range ds[i+1:] {
					r.d.src.Release(rest)
				}
				return err
			}
			if !send {
				continue
			}
		}
		if !r.start(dl, now, gen) {
			for _, rest := range ds[i+1:] {
				r.d.src.Release(rest)
			}
			return nil
		}
	}
	return nil
}

// fetchRound is a round that fetches for the slots and tokens free, no
// more, and starts what it got (through admit, see startAll): the plain
// round while the chain is closed, and the ordered round.
func (r *runner) fetchRound(now time.Time, gen uint64, free int, admit func(*store.Delivery) (bool, error)) (rd round) {
	k, wait := r.tokens(now, free)
	if k == 0 {
		rd.wake = now.Add(wait)
		return rd
	}
	got, err := r.d.src.Fetch(k, now)
	rd.fetched, rd.short = true, len(got) < k
	if serr := r.startAll(got, now, gen, admit); serr != nil {
		err = serr // the admitter's, as before the fetch's
	}
	if err != nil {
		return round{fetched: rd.fetched, err: err}
	}
	rd.more = !rd.short // there may be more; slots and tokens decide
	return rd
}

// take takes a slot and a token for one attempt, and returns false (taking
// nothing) if a control call came in since gen or either is missing.
func (r *runner) take(now time.Time, gen uint64) bool {
	d := r.d
	if d.control.Load() != gen || !d.takeSlot() {
		return false
	}
	if r.lim != nil && !r.lim.AllowN(now, 1) {
		d.slots.Add(-1)
		return false
	}
	return true
}

// launch queues dl, with the slot and token take took, for the workers,
// and starts one more if fewer are alive than attempts are under way. The
// queue holds a slot's worth (Concurrency): it never blocks, and a worker
// that finishes an attempt takes the next one without waiting for the run
// loop to be scheduled.
func (r *runner) launch(dl *store.Delivery, now time.Time) {
	r.sending++
	r.outstanding++
	if len(r.lps) > 0 {
		r.pickLoop().submit(job{dl: dl, probe: r.br.Started(now)})
		return
	}
	r.work <- job{dl: dl, probe: r.br.Started(now)}
	if int(r.alive.Load()) < r.sending {
		r.alive.Add(1)
		r.workers.Add(1)
		go r.worker()
	}
}

// job is one attempt for a worker.
type job struct {
	dl    *store.Delivery
	probe bool
}

// workerIdle is how long a worker waits for its next attempt before it
// exits. Workers are reused rather than started per attempt: a goroutine
// that has made an HTTP call has grown its stack, and a new one would grow
// it again (~5% of the drainer's CPU at full speed).
const workerIdle = 2 * time.Second

// worker makes the attempts queued by launch until none comes for
// workerIdle or Run ends. One that leaves counts itself out first and
// then looks at the queue once more: launch, which queues first and counts
// second, either saw it gone and started another, or queued before that
// look.
func (r *runner) worker() {
	defer r.workers.Done()
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		select {
		case j := <-r.work:
			r.attempt(j)
			t.Reset(workerIdle)
		case <-t.C:
			r.alive.Add(-1)
			select {
			case j := <-r.work:
				r.alive.Add(1)
				r.attempt(j)
				t.Reset(workerIdle)
			default:
				return
			}
		case <-r.quit:
			r.alive.Add(-1)
			return
		}
	}
}

// attempt sends j's message once, tells the run loop that the call is over
// and hands the outcome to the recorder; then, if the attempt succeeded
// and the chain has a message, the same for it.
func (r *runner) attempt(j job) {
	for {
		next := r.attempted(j, r.d.send(j.dl))
		if next == nil {
			return
		}
		j = job{dl: next}
	}
}

// attempted tells the run loop that j's HTTP call is over and hands its
// outcome to the recorder. It returns the chain's next message if the
// attempt succeeded and the chain has one: the caller sends it on the same
// slot (and may on the same connection).
func (r *runner) attempted(j job, res result) (next *store.Delivery) {
	ev, it, next := r.judged(j, res)
	r.events <- ev
	r.recq <- it
	return next
}

// judged is attempted's work but the hand-overs: the run loop's event for
// j's attempt, the outcome to record, and the chain's next message. The
// event must reach the run loop before the outcome reaches the recorder
// (the run loop counts a chained message before its outcome).
func (r *runner) judged(j job, res result) (ev event, it recItem, next *store.Delivery) {
	d := r.d
	j.dl.Body = nil // sent: only the outcome is left to record (see recordWindow)
	if r.ch != nil && res.err == nil && res.status >= 200 && res.status <= 299 {
		next = r.ch.take(d.control.Load(), d.now())
	}
	d.rndMu.Lock()
	rnd := d.rnd()
	d.rndMu.Unlock()
	return event{res: res, probe: j.probe, chained: next != nil},
		recItem{dl: j.dl, out: decide(&d.target, j.dl.Attempt, res, rnd), res: res}, next
}

// recItem is an outcome waiting to be recorded.
type recItem struct {
	dl  *store.Delivery
	out store.Outcome
	res result
}

// maxRecordBatch bounds the outcomes one recorder round hands to the store.
const maxRecordBatch = 256

// recorder records the outcomes the workers hand it, as many at once as
// are waiting (they share the store's commits, and the recorder wakes once
// for them), then tells the run loop about each. It returns when recq is
// closed (Run's end, once nothing is outstanding).
func (r *runner) recorder() {
	defer close(r.recDone)
	batch := make([]recItem, 0, maxRecordBatch)
	var sc recScratch
	for {
		select {
		case it, ok := <-r.recq:
			if !ok {
				return
			}
			batch = append(batch[:0], it)
		case b := <-r.recb:
			batch = append(batch[:0], *b...)
			putRecordBatch(b)
		}
		// The worker that woke us made us its next goroutine to run, ahead
		// of the others about to hand over theirs: yield once so that this
		// round takes them too (fewer, larger commits), as the store's
		// writer does.
		runtime.Gosched()
	more:
		for len(batch) < maxRecordBatch {
			select {
			case it, ok := <-r.recq:
				if !ok {
					break more
				}
				batch = append(batch, it)
			case b := <-r.recb:
				batch = append(batch, *b...)
				putRecordBatch(b)
			default:
				break more
			}
		}
		errs := r.d.recordBatch(batch, &sc)
		// The run loop hears of each outcome it must act on (ordering, a
		// retry, a failed record) and of the others as one count: one
		// event per round instead of one per message.
		plain := 0
		for i, it := range batch {
			if ev, alone := r.d.finish(it.dl, it.out, it.res, errs[i], r.watch != nil); alone {
				r.events <- ev
			} else {
				plain++
			}
		}
		if plain > 0 {
			r.events <- event{recorded: true, n: plain}
		}
		clear(batch)
	}
}

func putRecordBatch(b *[]recItem) {
	clear(*b)
	*b = (*b)[:0]
	recordBatches.Put(b)
}

// recScratch is the recorder's own slices for CompleteBatch's arguments,
// reused from batch to batch (a store keeps neither slice past the call).
type recScratch struct {
	ds   []*store.Delivery
	outs []store.Outcome
}

// recordBatch records the outcomes of batch: with the consumer's
// CompleteBatch when it has one (any that fails with ErrIO goes on through
// record's retries), else each with record, side by side.
func (d *Drainer) recordBatch(batch []recItem, sc *recScratch) []error {
	if bc, ok := d.src.(store.BatchCompleter); ok && len(batch) > 1 {
		ds, outs := sc.ds[:0], sc.outs[:0]
		for _, it := range batch {
			ds, outs = append(ds, it.dl), append(outs, it.out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
		errs := bc.CompleteBatch(ctx, ds, outs)
		cancel()
		clear(ds) // no message kept alive by the scratch
		clear(outs)
		sc.ds, sc.outs = ds, outs
		for i, err := range errs {
			if errors.Is(err, store.ErrIO) {
				errs[i] = d.record(batch[i].dl, batch[i].out)
			}
		}
		return errs
	}
	errs := make([]error, len(batch))
	var wg sync.WaitGroup
	for i, it := range batch {
		wg.Go(func() { errs[i] = d.record(it.dl, it.out) })
	}
	wg.Wait()
	return errs
}

// finish counts and logs a recorded (or unrecordable) outcome and calls
// the callback. It returns the run loop's event for it, and whether the
// loop needs that event on its own (each: its feeder follows every outcome;
// or retrying, or unrecorded); the others it may hear of as a count.
func (d *Drainer) finish(dl *store.Delivery, out store.Outcome, res result, err error, each bool) (event, bool) {
	// The logger with the message's attributes is made only when something
	// is logged: With costs allocations on every delivery otherwise.
	log := func() *slog.Logger {
		return d.log.With("seq", dl.ID.Seq(), "attempt", dl.Attempt, "status", res.status)
	}
	switch {
	case err != nil:
		d.unrecorded.Add(1)
		log().Error("cannot record the outcome; the message stays in flight until the drainer stops, then is attempted again",
			"outcome", string(out.Phase), "err", err)
	case out.Phase == store.Delivered:
		d.delivered.Add(1)
		d.countClass(OutcomeDelivered, res.status)
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			log().Debug("delivered", "duration", res.dur)
		}
	case out.Phase == store.Retrying:
		d.retried.Add(1)
		d.countClass(OutcomeRetried, res.status)
		log().Info("attempt failed; will retry", "err", out.Attempt.Error, "next_try", out.NextTry)
	default:
		d.dead.Add(1)
		d.countClass(OutcomeDead, res.status)
		log().Warn("message is dead", "err", out.Attempt.Error)
	}
	if err == nil {
		d.callback(dl, &out)
	}
	ev := event{recorded: true, retrying: err == nil && out.Phase == store.Retrying,
		dl: dl, recordOK: err == nil, final: out.Phase != store.Retrying}
	if err != nil {
		ev.unrecorded = []*store.Delivery{dl}
	}
	return ev, each || err != nil || ev.retrying
}

// record hands the outcome of dl to the store. A write that fails (ErrIO:
// a full disk, an I/O error) is tried again, 50 ms apart doubling to 2 s,
// until it succeeds or this Run stops fetching (then once more): the
// attempt keeps its slot meanwhile, so a store that cannot record holds the
// drain back instead of having messages sent again. Other errors (the store
// closed) return at once.
func (d *Drainer) record(dl *store.Delivery, out store.Outcome) error {
	var halt <-chan struct{}
	if h := d.halt.Load(); h != nil {
		halt = *h
	}
	wait := 50 * time.Millisecond
	for tries := 1; ; tries++ {
		ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
		err := d.src.Complete(ctx, dl, out)
		cancel()
		if err == nil || !errors.Is(err, store.ErrIO) {
			if err == nil && tries > 1 {
				d.log.Info("outcome recorded after failed writes", "id", dl.ID.String(), "tries", tries)
			}
			return err
		}
		if tries == 1 {
			d.log.Warn("cannot record the outcome; trying again until it is recorded or the drainer stops",
				"id", dl.ID.String(), "err", err)
		}
		select {
		case <-halt:
			ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
			err = d.src.Complete(ctx, dl, out)
			cancel()
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// send makes one HTTP attempt of dl.
func (d *Drainer) send(dl *store.Delivery) result {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	buildRequest(req, &d.ep, dl)
	var keep int64
	if c := d.target.CaptureResponse; c != nil {
		keep = c.MaxBytes
	}
	return d.do(req, resp, keep)
}

// do sends req once, as one attempt, and reads the answer into resp.
//
// keep >= 0 streams the answer's body: only its status line and headers are
// held, keep bytes of a 2xx body are captured (capture_response) and the
// rest is discarded as it arrives (readBody), so memory per attempt does not
// grow with the answer's size. keep < 0 reads the body whole into resp, up
// to 16 MiB (Forward, which hands it to the client).
//
// The attempt ends at the target's timeout: the connection's deadlines are
// set to it, and a request not answered by then fails with a timeout and its
// connection is closed, so the downstream sees the client leave rather than
// keep working for an attempt nobody waits for.
func (d *Drainer) do(req *fasthttp.Request, resp *fasthttp.Response, keep int64) result {
	d.attempts.Add(1)
	d.sending.Add(1)
	at := d.now()
	resp.StreamBody = keep >= 0
	err := d.client.DoDeadline(req, resp, time.Now().Add(d.target.Timeout))
	res := d.answered(resp, err, keep, at)
	d.sending.Add(-1)
	return res
}

// answered turns what reading an answer into resp came to (err, and resp
// with the body streamed or read as do says for keep) into the attempt's
// result: the status, a captured answer, Retry-After. It reads and closes
// a streamed body. at is when the attempt started.
func (d *Drainer) answered(resp *fasthttp.Response, err error, keep int64, at time.Time) result {
	var body []byte
	var truncated bool
	if stream := resp.BodyStream(); stream != nil && err == nil {
		if s := resp.StatusCode(); s < 200 || s > 299 {
			keep = 0 // only a delivery's answer is captured
		}
		body, truncated = readBody(stream, keep)
	}
	resp.CloseBodyStream() // back to the pool when read to its end; else the connection is closed
	res := result{at: at, dur: d.now().Sub(at)}

	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		err = nil // the status line and headers were read: the answer is known
		res.tooLarge = true
	}
	if err != nil {
		res.err = err
		return res
	}
	res.status = resp.StatusCode()
	if keep > 0 && res.status >= 200 && res.status <= 299 {
		res.resp = capture(resp, body, truncated)
	}
	if res.status == fasthttp.StatusTooManyRequests || res.status == fasthttp.StatusServiceUnavailable {
		for k, v := range resp.Header.All() {
			if bytes.EqualFold(k, []byte("Retry-After")) {
				if ra, ok := ParseRetryAfter(string(v), at.Add(res.dur)); ok {
					res.retryAfter = ra
				}
				break
			}
		}
	}
	return res
}
