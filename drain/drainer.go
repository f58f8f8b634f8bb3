package drain

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// Source is what a drainer needs from the store: one target's view of a
// route's queue. *buffer.Consumer implements it.
type Source interface {
	// Fetch returns up to max messages to attempt now; each is in flight
	// until Complete or Release.
	Fetch(max int, now time.Time) ([]*buffer.Delivery, error)
	// Ready is signalled after new messages are committed.
	Ready() <-chan struct{}
	// NextRetry returns when the earliest retry not in flight is due.
	NextRetry() (time.Time, bool)
	// Complete records the outcome of an attempt.
	Complete(ctx context.Context, d *buffer.Delivery, out buffer.Outcome) error
	// Release gives back a fetched message that was not attempted.
	Release(d *buffer.Delivery)
}

var _ Source = (*buffer.Consumer)(nil)

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
}

const (
	// pollInterval is the safety net: an idle drainer fetches at least this often.
	pollInterval = 500 * time.Millisecond
	// fetchErrorPause is how long the drainer waits after a failed Fetch.
	fetchErrorPause = time.Second
	// recordTimeout bounds the wait to hand an outcome to the store.
	recordTimeout = time.Minute
	// maxResponseBody bounds the response body read (and thrown away) per attempt.
	maxResponseBody = 16 << 20
)

// Drainer delivers one target's messages. Create it with New, start it with
// Run; Pause, Resume, SetRate, ResetRate and Stats may be called at any time
// from any goroutine.
type Drainer struct {
	route  string
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

	delivered, retried, dead, attempts, unrecorded atomic.Uint64
	sending                                        atomic.Int64
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
	}
	for i, w := range t.Windows {
		if !validRate(w.Rate) {
			return nil, fail("window %d: invalid rate %v", i, w.Rate.PerSecond)
		}
	}
	if t.Concurrency <= 0 {
		t.Concurrency = 16
	}
	if t.Timeout <= 0 {
		t.Timeout = 10 * time.Second
	}
	if t.Burst <= 0 {
		t.Burst = 1
		if !t.Rate.Unlimited {
			t.Burst = max(1, int(math.Ceil(t.Rate.PerSecond/10)))
		}
	}
	if t.Timezone == nil {
		t.Timezone = time.UTC
	}
	if t.Retry.MaxAttempts <= 0 {
		t.Retry.MaxAttempts = 10
	}
	if t.Retry.Initial <= 0 {
		t.Retry.Initial = 500 * time.Millisecond
	}
	if t.Retry.Max <= 0 {
		t.Retry.Max = 5 * time.Minute
	}
	t.Retry.Max = max(t.Retry.Max, t.Retry.Initial)
	if on := t.Retry.On; on.Codes == nil && !on.Class4xx && !on.Class5xx && !on.Timeout && !on.Connect {
		t.Retry.On = policies.RetryOn{
			Codes:    map[int]bool{408: true, 425: true, 429: true},
			Class5xx: true, Timeout: true, Connect: true,
		}
	}
	d := &Drainer{
		route:  cfg.Route,
		target: t,
		src:    src,
		log:    cfg.Logger,
		now:    cfg.Now,
		rnd:    cfg.Rand,
		ep:     newEndpoint(t.URL),
		base:   t.Rate,
		kick:   make(chan struct{}, 1),
	}
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
	d.client = &fasthttp.HostClient{
		Addr:                          d.ep.addr,
		IsTLS:                         d.ep.scheme == "https",
		TLSConfig:                     cfg.TLSConfig,
		MaxConns:                      t.Concurrency,
		MaxConnWaitTimeout:            t.Timeout,
		WriteTimeout:                  t.Timeout, // also bounds dialling and the TLS handshake
		MaxResponseBodySize:           maxResponseBody,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
		// One attempt is one request: fasthttp must not resend on its own,
		// or the target could see more than the rate allows.
		MaxIdemponentCallAttempts: 1,
		RetryIfErr:                func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	return d, nil
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
	select {
	case d.kick <- struct{}{}:
	default:
	}
	d.log.Info(msg, args...)
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
	Retried   uint64 // attempts that failed and were rescheduled
	Dead      uint64 // messages recorded as dead
	Attempts  uint64 // HTTP attempts started
	// Unrecorded counts outcomes the store did not take (for example, closed
	// at shutdown); those messages are attempted again after a restart.
	Unrecorded uint64
	InFlight   int     // HTTP requests open to the target now; at most Concurrency
	Rate       float64 // requests per second in force now: +Inf if unlimited, 0 if paused
	Paused     bool    // Pause is in force
}

// Stats returns the drainer's counters and the rate in force.
func (d *Drainer) Stats() Stats {
	r, paused, _ := d.rateAt(d.now())
	d.mu.Lock()
	manual := d.paused
	d.mu.Unlock()
	st := Stats{
		Delivered:  d.delivered.Load(),
		Retried:    d.retried.Load(),
		Dead:       d.dead.Load(),
		Attempts:   d.attempts.Load(),
		Unrecorded: d.unrecorded.Load(),
		InFlight:   int(d.sending.Load()),
		Paused:     manual,
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
	r := &runner{d: d, events: make(chan event, 4*d.target.Concurrency)}
	err := r.loop(ctx)
	// Every attempt goroutine sends two events; wait for the last of them.
	for r.outstanding > 0 {
		r.handle(<-r.events)
	}
	d.client.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("drain: route %q: target %q: %w", d.route, d.target.Name, err)
	}
	return nil
}

// event is what an attempt goroutine tells the run loop.
type event struct {
	recorded bool // false: the HTTP call is over (its slot is free); true: the outcome is recorded (or failed)
	retrying bool // recorded as Retrying: the retry schedule changed
}

// runner is the state of one Run, owned by the goroutine running it.
type runner struct {
	d      *Drainer
	events chan event

	sending     int // attempts holding a concurrency slot (HTTP under way)
	outstanding int // attempts started whose outcome is not yet recorded

	lim        *rate.Limiter // nil while the rate is unlimited
	cur        policies.Rate // rate in force, as last applied
	curPaused  bool
	applied    bool
	nextChange time.Time     // next change of the windowed rate; zero if none
	changeBase policies.Rate // the base rate nextChange was computed with
	changeOK   bool          // nextChange is computed
}

func (r *runner) handle(ev event) {
	if ev.recorded {
		r.outstanding--
	} else {
		r.sending--
	}
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
	if r.applied && cur == r.cur && paused == r.curPaused {
		return paused, wasPaused
	}
	switch {
	case paused:
		// Leave the limiter as it is: nothing takes tokens while paused, and
		// it refills at the old rate up to Burst, which the guarantee allows.
	case cur.Unlimited:
		r.lim = nil
	case r.lim == nil:
		r.lim = rate.NewLimiter(rate.Limit(cur.PerSecond), d.target.Burst) // starts full: Burst
	default:
		r.lim.SetLimitAt(now, rate.Limit(cur.PerSecond))
	}
	if r.applied {
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

// loop is the run loop: it owns the limiter, the slots and every call to
// Fetch and Release. It returns when ctx is done (nil) or the source is
// closed.
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
		if err := ctx.Err(); err != nil {
			return nil
		}
		if wasPaused && !paused {
			idle = false
		}
		var wake time.Time // earliest timer deadline; zero: none
		if !paused && !idle && !now.Before(fetchAfter) {
			free := min(conc-r.sending, 2*conc-r.outstanding)
			if free > 0 {
				k, wait := r.tokens(now, free)
				if k == 0 {
					wake = now.Add(wait)
				} else {
					got, err := d.src.Fetch(k, now)
					lastFetch = now
					for i, dl := range got {
						if !r.start(dl, now, gen) {
							for _, rest := range got[i+1:] {
								d.src.Release(rest)
							}
							break
						}
					}
					if err != nil {
						if errors.Is(err, buffer.ErrClosed) {
							return err
						}
						d.log.Error("fetch failed; trying again shortly", "err", err)
						fetchAfter = now.Add(fetchErrorPause)
						continue
					}
					if len(got) == k {
						continue // there may be more; slots and tokens decide
					}
					idle, checkRetry = true, true
				}
			}
		}
		if !paused {
			if now.Before(fetchAfter) {
				wake = earliest(wake, fetchAfter)
			}
			if idle {
				if checkRetry {
					retryAt, hasRetry = d.src.NextRetry()
					checkRetry = false
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
		var timerC <-chan time.Time
		if !wake.IsZero() {
			timer.Reset(max(wake.Sub(now), 0))
			timerC = timer.C
		}
		var ready <-chan struct{}
		if !paused {
			ready = d.src.Ready()
		}
		select {
		case <-ctx.Done():
		case <-d.kick:
			idle = false
		case ev := <-r.events:
			r.handle(ev)
			if ev.retrying {
				checkRetry = true
			}
		case <-ready:
			idle = false
		case <-timerC:
			idle = false
		}
		timer.Stop()
	}
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
func (r *runner) start(dl *buffer.Delivery, now time.Time, gen uint64) bool {
	d := r.d
	if d.control.Load() != gen || (r.lim != nil && !r.lim.AllowN(now, 1)) {
		d.src.Release(dl)
		return false
	}
	r.sending++
	r.outstanding++
	go d.attempt(dl, r.events)
	return true
}

// attempt sends dl once, records the outcome and tells the run loop.
func (d *Drainer) attempt(dl *buffer.Delivery, events chan<- event) {
	res := d.send(dl)
	events <- event{}

	d.rndMu.Lock()
	rnd := d.rnd()
	d.rndMu.Unlock()
	out := decide(&d.target, dl.Attempt, res, rnd)

	ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	err := d.src.Complete(ctx, dl, out)
	cancel()
	log := d.log.With("id", dl.ID.String(), "attempt", dl.Attempt, "status", res.status)
	switch {
	case err != nil:
		d.unrecorded.Add(1)
		log.Error("cannot record the outcome; the message stays in flight and is attempted again after a restart",
			"outcome", string(out.Phase), "err", err)
	case out.Phase == buffer.Delivered:
		d.delivered.Add(1)
		log.Debug("delivered", "duration", res.dur)
	case out.Phase == buffer.Retrying:
		d.retried.Add(1)
		log.Info("attempt failed; will retry", "err", out.Attempt.Error, "next_try", out.NextTry)
	default:
		d.dead.Add(1)
		log.Warn("message is dead", "err", out.Attempt.Error)
	}
	events <- event{recorded: true, retrying: err == nil && out.Phase == buffer.Retrying}
}

// send makes one HTTP attempt of dl.
func (d *Drainer) send(dl *buffer.Delivery) result {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	buildRequest(req, &d.ep, dl)

	d.attempts.Add(1)
	d.sending.Add(1)
	at := d.now()
	err := d.client.DoDeadline(req, resp, time.Now().Add(d.target.Timeout))
	res := result{at: at, dur: d.now().Sub(at)}
	d.sending.Add(-1)

	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		err = nil // the status line and headers were read: the answer is known
	}
	if err != nil {
		res.err = err
		return res
	}
	res.status = resp.StatusCode()
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
