package loadtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// DownstreamConfig describes a mock target. Zero values mean no limit and
// no fault.
type DownstreamConfig struct {
	Listen string // loopback address; default "127.0.0.1:0" (a free port)

	// Rate is the capacity in requests per second, a token bucket of Burst
	// tokens (default max(1, Rate/10)). A request over it gets 429 with
	// Retry-After: 1. 0 = unlimited.
	Rate  float64
	Burst int

	// Concurrency is the most requests handled at once; one over it gets
	// 503 with Retry-After: 1. 0 = unlimited.
	Concurrency int

	Latency  time.Duration // added to every request within capacity
	FailRate float64       // fraction in [0,1] of requests within capacity answered 503 + Retry-After: 1
	// ThrottleRate is a fraction answered 429 + Retry-After: 1 whatever the
	// capacity (a downstream that throttles on its own).
	ThrottleRate float64
	// ResetRate is a fraction whose connection is reset (RST) with no answer.
	ResetRate float64
	// HangRate is a fraction answered only after HangFor (default 30s): a
	// sender with a shorter timeout sees a timeout.
	HangRate float64
	HangFor  time.Duration
	Seed     int64 // seeds the fault draws

	Now func() time.Time // clock for the rate limit and arrival times; default time.Now
}

// Validate reports what is wrong with c, all of it.
func (c DownstreamConfig) Validate() error {
	var errs []error
	if c.Listen != "" {
		if host, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("Listen %q: %w", c.Listen, err))
		} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			errs = append(errs, fmt.Errorf("Listen %q: must be a loopback address such as 127.0.0.1:8081", c.Listen))
		}
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("Rate %g: must not be negative", c.Rate))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("Burst %d: must not be negative", c.Burst))
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("Concurrency %d: must not be negative", c.Concurrency))
	}
	if c.Latency < 0 {
		errs = append(errs, fmt.Errorf("Latency %v: must not be negative", c.Latency))
	}
	for name, f := range map[string]float64{"FailRate": c.FailRate, "ThrottleRate": c.ThrottleRate, "ResetRate": c.ResetRate, "HangRate": c.HangRate} {
		if f < 0 || f > 1 {
			errs = append(errs, fmt.Errorf("%s %g: want a fraction in [0,1]", name, f))
		}
	}
	if sum := c.FailRate + c.ThrottleRate + c.ResetRate + c.HangRate; sum > 1 {
		errs = append(errs, fmt.Errorf("FailRate+ThrottleRate+ResetRate+HangRate = %g: the fractions must add up to at most 1", sum))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loadtest: downstream config: %w", err)
	}
	return nil
}

func (c DownstreamConfig) withDefaults() DownstreamConfig {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	if c.Burst == 0 {
		c.Burst = max(1, int(c.Rate/10))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Delivery is one request that the Downstream answered 2xx.
type Delivery struct {
	ID         string    `json:"id"`          // X-Sluice-Id; "" if absent
	At         time.Time `json:"at"`          // arrival, by DownstreamConfig.Now
	EnqueuedAt time.Time `json:"enqueued_at"` // X-Sluice-Enqueued-At; zero if absent or malformed
	Attempt    int       `json:"attempt"`     // X-Sluice-Attempt; 0 if absent
	// IdempotencyKey is the Idempotency-Key header sluice sends on (the
	// client's, or the id): every copy of one message must carry the same.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// DownstreamStats is a copy of what a Downstream has counted so far.
type DownstreamStats struct {
	// The capacity it was started with, for the report.
	Rate        float64
	Burst       int
	Concurrency int

	Requests   uint64 // everything that arrived
	Received   uint64 // answered 2xx, duplicates included
	IDs        int    // distinct X-Sluice-Ids answered 2xx; requests without one not counted
	Rejected   uint64 // answered 429 or 503: Throttled + Overloaded + Failed
	Throttled  uint64 // 429, over Rate
	Overloaded uint64 // 503, over Concurrency
	Failed     uint64 // 503, injected by FailRate
	Injected   uint64 // 429 injected by ThrottleRate (counted in Rejected)
	Resets     uint64 // connections reset by ResetRate
	Hung       uint64 // answers held for HangFor by HangRate

	Arrivals      Series // 2xx answers per second, by arrival time
	MaxPerSecond  int    // largest count in Arrivals
	MaxConcurrent int    // most requests in the handler at once, rejected ones included

	// Attempts counts every request per second, rejected ones included:
	// what the sender really offered, which a sender that keeps to the
	// downstream's rate holds under Rate+Burst.
	Attempts             Series
	MaxAttemptsPerSecond int // largest count in Attempts
}

// A Downstream is a mock target on loopback with a limited capacity. It
// answers 2xx within capacity and records, for each such request, its
// X-Sluice-Id, arrival time, X-Sluice-Enqueued-At and X-Sluice-Attempt.
type Downstream struct {
	cfg      DownstreamConfig
	limiter  *rate.Limiter // nil when Rate is 0
	ln       net.Listener
	srv      *fasthttp.Server
	served   chan error // Serve's result
	closed   sync.Once
	closeErr error
	closing  chan struct{} // closed by Close: releases hung requests

	inflight atomic.Int64

	mu         sync.Mutex
	rng        *rand.Rand
	stats      DownstreamStats
	deliveries []Delivery
	counts     map[string]int // id -> 2xx answers
}

// StartDownstream listens on cfg.Listen and serves until Close.
func StartDownstream(cfg DownstreamConfig) (*Downstream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("loadtest: downstream: %w", err)
	}
	d := &Downstream{
		cfg:     cfg,
		ln:      ln,
		served:  make(chan error, 1),
		closing: make(chan struct{}),
		// PCG from one seed: the same seed gives the same run of draws.
		rng:    rand.New(rand.NewPCG(uint64(cfg.Seed), uint64(cfg.Seed))),
		counts: map[string]int{},
		stats:  DownstreamStats{Rate: cfg.Rate, Burst: cfg.Burst, Concurrency: cfg.Concurrency},
	}
	if cfg.Rate > 0 {
		d.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst)
	}
	d.srv = &fasthttp.Server{
		Handler:         d.handle,
		Name:            "sluice-loadtest-downstream",
		ReadTimeout:     30 * time.Second,
		IdleTimeout:     30 * time.Second,
		CloseOnShutdown: true,
	}
	go func() { d.served <- d.srv.Serve(ln) }()
	return d, nil
}

// URL returns the base URL, "http://127.0.0.1:port".
func (d *Downstream) URL() string { return "http://" + d.ln.Addr().String() }

// Close stops listening, waits up to 5s for requests in flight, and closes
// the connections. It is safe to call more than once.
func (d *Downstream) Close() error {
	d.closed.Do(func() {
		close(d.closing)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := d.srv.ShutdownWithContext(ctx)
		d.closeErr = errors.Join(err, <-d.served)
	})
	return d.closeErr
}

func (d *Downstream) handle(ctx *fasthttp.RequestCtx) {
	now := d.cfg.Now()
	n := d.inflight.Add(1)
	defer d.inflight.Add(-1)

	d.mu.Lock()
	d.stats.Requests++
	d.stats.Attempts.Add(now, 1)
	d.stats.MaxConcurrent = max(d.stats.MaxConcurrent, int(n))
	var reject int
	switch {
	case d.cfg.Concurrency > 0 && n > int64(d.cfg.Concurrency):
		d.stats.Overloaded++
		reject = fasthttp.StatusServiceUnavailable
	case d.limiter != nil && !d.limiter.AllowN(now, 1):
		d.stats.Throttled++
		reject = fasthttp.StatusTooManyRequests
	}
	// Drawn for every request within capacity, so that the draws depend on
	// the order of requests only.
	var fault int // 0 none, 1 fail 503, 2 throttle 429, 3 reset, 4 hang
	if reject == 0 && d.cfg.FailRate+d.cfg.ThrottleRate+d.cfg.ResetRate+d.cfg.HangRate > 0 {
		x := d.rng.Float64()
		for i, f := range []float64{d.cfg.FailRate, d.cfg.ThrottleRate, d.cfg.ResetRate, d.cfg.HangRate} {
			if x < f {
				fault = i + 1
				break
			}
			x -= f
		}
	}
	fail := fault == 1
	switch fault {
	case 2:
		d.stats.Injected++
		d.stats.Throttled++
		reject = fasthttp.StatusTooManyRequests
	case 3:
		d.stats.Resets++
	case 4:
		d.stats.Hung++
	}
	d.mu.Unlock()

	if fault == 3 {
		if tc, ok := ctx.Conn().(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST
		}
		ctx.Conn().Close()
		return
	}
	if fault == 4 {
		hang := d.cfg.HangFor
		if hang <= 0 {
			hang = 30 * time.Second
		}
		select {
		case <-time.After(hang):
		case <-d.closing:
		}
	}

	if reject != 0 {
		d.reject(ctx, reject)
		return
	}
	if d.cfg.Latency > 0 {
		time.Sleep(d.cfg.Latency)
	}
	if fail {
		d.mu.Lock()
		d.stats.Failed++
		d.mu.Unlock()
		d.reject(ctx, fasthttp.StatusServiceUnavailable)
		return
	}

	h := &ctx.Request.Header
	del := Delivery{ID: string(h.Peek("X-Sluice-Id")), At: now}
	del.Attempt, _ = strconv.Atoi(string(h.Peek("X-Sluice-Attempt")))
	del.IdempotencyKey = string(h.Peek("Idempotency-Key"))
	del.EnqueuedAt, _ = time.Parse(time.RFC3339Nano, string(h.Peek("X-Sluice-Enqueued-At")))
	d.mu.Lock()
	d.stats.Received++
	d.stats.Arrivals.Add(now, 1)
	d.deliveries = append(d.deliveries, del)
	d.counts[del.ID]++
	d.mu.Unlock()

	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"ok":true}`)
}

func (d *Downstream) reject(ctx *fasthttp.RequestCtx, status int) {
	d.mu.Lock()
	d.stats.Rejected++
	d.mu.Unlock()
	ctx.Response.Header.Set("Retry-After", "1")
	ctx.SetStatusCode(status)
}

// Stats returns a copy of the counts so far.
func (d *Downstream) Stats() DownstreamStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Arrivals = d.stats.Arrivals.clone()
	s.MaxPerSecond = s.Arrivals.Max()
	s.Attempts = d.stats.Attempts.clone()
	s.MaxAttemptsPerSecond = s.Attempts.Max()
	s.IDs = len(d.counts)
	if d.counts[""] > 0 {
		s.IDs--
	}
	return s
}

// Deliveries returns how many times each X-Sluice-Id was answered 2xx;
// requests without one are counted under "".
func (d *Downstream) Deliveries() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.counts)
}

// Arrivals returns the 2xx answers grouped by X-Sluice-Id (requests without
// one under ""), each id's in the order they were answered: the input of
// Verify.
func (d *Downstream) Arrivals() map[string][]Delivery {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := make(map[string][]Delivery, len(d.counts))
	for _, del := range d.deliveries {
		m[del.ID] = append(m[del.ID], del)
	}
	return m
}

// Missing returns the ids in ids that have not been answered 2xx yet.
func (d *Downstream) Missing(ids []string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var missing []string
	for _, id := range ids {
		if d.counts[id] == 0 {
			missing = append(missing, id)
		}
	}
	return missing
}
