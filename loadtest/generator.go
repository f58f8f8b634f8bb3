package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// GenConfig describes the load that Generate offers. Zero values of the
// optional fields mean the defaults noted.
type GenConfig struct {
	URL         string        // e.g. http://127.0.0.1:8080/api/orders
	Method      string        // default POST
	Pacer       Pacer         // required
	Duration    time.Duration // how long to offer load; 0 = until MaxRequests
	MaxRequests uint64        // 0 = no cap; else stop after this many sends (dropped ones count)

	Body   func(seq uint64) []byte // default: a JSON order of ~1 KiB with the seq in it
	Header map[string]string       // added to every request; Content-Type defaults to application/json

	// IdempotencyKeys sends Idempotency-Key: lt-<RunID>-<seq>.
	IdempotencyKeys bool
	RunID           string // default: random, so that two runs never share keys

	// Workers is the most requests in flight (default 256). A send that
	// falls due while all are busy is dropped and recorded as
	// ErrSaturated: queueing it would delay it and bend the schedule.
	Workers int
	Timeout time.Duration // per request, default 10s
}

// Validate reports what is wrong with c, all of it.
func (c GenConfig) Validate() error {
	var errs []error
	if u, err := url.Parse(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("URL: %w", err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("URL %q: want http://host:port/path", c.URL))
	}
	if c.Pacer == nil {
		errs = append(errs, errors.New("Pacer: required"))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("Duration %v: must not be negative", c.Duration))
	}
	if c.Duration == 0 && c.MaxRequests == 0 {
		errs = append(errs, errors.New("Duration or MaxRequests: one is required, or the run never ends"))
	}
	if c.Workers < 0 {
		errs = append(errs, fmt.Errorf("Workers %d: must not be negative", c.Workers))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("Timeout %v: must not be negative", c.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loadtest: generator config: %w", err)
	}
	return nil
}

func (c GenConfig) withDefaults() GenConfig {
	if c.Method == "" {
		c.Method = fasthttp.MethodPost
	}
	if c.Body == nil {
		c.Body = OrderBody
	}
	if c.RunID == "" {
		c.RunID = strings.ToLower(rand.Text()[:8])
	}
	if c.Workers == 0 {
		c.Workers = 256
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	return c
}

// OrderBody is the default request body: a JSON order of about 1 KiB that
// carries seq, padded to the size of a realistic order.
func OrderBody(seq uint64) []byte {
	const size = 1024
	b := fmt.Appendf(make([]byte, 0, size), `{"order_id":"lt-%d","seq":%d,"customer":"loadtest",`+
		`"items":[{"sku":"SKU-%03d","qty":1,"price_cents":1999}],"note":"`, seq, seq, seq%1000)
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

// Generate offers load as cfg describes and records every result in rec.
// The send times follow cfg.Pacer whatever the server does (open loop); at
// most cfg.Workers requests are in flight and sends due beyond that are
// recorded as dropped. Generate returns when the run is over and every
// request in flight has finished (each within cfg.Timeout); if ctx is
// cancelled first it stops offering and returns ctx.Err() after the same
// wait, and rec holds the partial run.
func Generate(ctx context.Context, cfg GenConfig, rec *Recorder) error {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	if rec == nil {
		return errors.New("loadtest: Generate: nil Recorder")
	}
	g := &generator{
		cfg: cfg,
		rec: rec,
		client: &fasthttp.Client{
			Name:                   "sluice-loadtest",
			MaxConnsPerHost:        cfg.Workers, // never the limit: slots is
			ReadTimeout:            cfg.Timeout,
			WriteTimeout:           cfg.Timeout,
			DisablePathNormalizing: true,
		},
		slots: make(chan struct{}, cfg.Workers),
	}
	defer g.client.CloseIdleConnections()

	err := g.offer(ctx)
	g.wg.Wait()
	return err
}

type generator struct {
	cfg    GenConfig
	rec    *Recorder
	client *fasthttp.Client
	slots  chan struct{} // one token per request in flight
	wg     sync.WaitGroup
}

// offer runs the schedule: wake, send everything that is due by now, sleep
// until the next send is due. Catching up after a late wake sends the
// overdue requests at once rather than skipping them.
func (g *generator) offer(ctx context.Context) error {
	start := time.Now()
	g.rec.span(start)
	defer func() { g.rec.span(time.Now()) }()

	timer := time.NewTimer(0)
	defer timer.Stop()
	var seq uint64
	for {
		elapsed := time.Since(start)
		last := g.cfg.Duration > 0 && elapsed >= g.cfg.Duration
		if last {
			elapsed = g.cfg.Duration
		}
		due := Hits(g.cfg.Pacer, elapsed)
		if g.cfg.MaxRequests > 0 && due >= g.cfg.MaxRequests {
			due, last = g.cfg.MaxRequests, true
		}
		for seq < due {
			seq++
			g.fire(seq)
		}
		if last {
			return nil
		}
		timer.Reset(nextDue(g.cfg.Pacer, elapsed, seq))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
}

func (g *generator) fire(seq uint64) {
	select {
	case g.slots <- struct{}{}:
	default:
		g.rec.Record(Result{Seq: seq, Sent: time.Now(), Err: ErrSaturated})
		return
	}
	g.wg.Go(func() {
		defer func() { <-g.slots }()
		g.rec.Record(g.do(seq))
	})
}

func (g *generator) do(seq uint64) Result {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	req.SetRequestURI(g.cfg.URL)
	req.Header.SetMethod(g.cfg.Method)
	req.Header.SetContentType("application/json")
	for k, v := range g.cfg.Header {
		req.Header.Set(k, v)
	}
	if g.cfg.IdempotencyKeys {
		req.Header.Set("Idempotency-Key", fmt.Sprintf("lt-%s-%d", g.cfg.RunID, seq))
	}
	req.SetBodyRaw(g.cfg.Body(seq))

	sent := time.Now()
	err := g.client.DoTimeout(req, resp, g.cfg.Timeout)
	res := Result{Seq: seq, Sent: sent, Latency: time.Since(sent), Err: err}
	if err == nil {
		res.Status = resp.StatusCode()
		res.ID = string(resp.Header.Peek("X-Sluice-Id"))
	}
	return res
}
