package drain

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

// Delivery callbacks (callback_header on a route).
//
// A producer names a URL in the route's callback header; the proxy stores it
// with the message (as one of its headers) only if it matches the policy's
// allow-list. When the message reaches a final outcome for this target
// (delivered, or dead), the drainer POSTs a CallbackEvent to that URL. This
// is best effort: a few tries with a short timeout, in a goroutine of the
// drainer that Run waits for before it returns; a failure is logged and
// counted (Stats.CallbacksFailed) and never changes the message. Callbacks
// are not stored: one that has not been made when the process dies is lost,
// and none is made for a message delivered by a spillover route's direct
// attempt (the producer got the answer itself).

// CallbackEvent is the JSON body of a delivery callback.
type CallbackEvent struct {
	ID         string    `json:"id"`
	Route      string    `json:"route"`
	Target     string    `json:"target"`
	Status     string    `json:"status"`                // "delivered" or "dead"
	StatusCode int       `json:"status_code,omitempty"` // of the last attempt; absent if it got no answer
	Attempts   int       `json:"attempts"`
	At         time.Time `json:"at"`              // when the last attempt started
	Error      string    `json:"error,omitempty"` // why it is dead
}

// Limits of delivery callbacks.
const (
	callbackTimeout  = 5 * time.Second        // per try, connecting included
	callbackTries    = 3                      // tries per callback
	callbackBackoff  = 500 * time.Millisecond // before the second try; doubles
	callbackGrace    = 5 * time.Second        // at shutdown, retries wait at most this long
	callbackParallel = 256                    // callbacks under way at once; beyond, dropped (logged)
)

// callbacks is a drainer's callback machinery; the zero value is off.
type callbacks struct {
	header string
	allow  interface{ Allows(string) bool }
	route  string
	client *fasthttp.Client
	sem    chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	ctx    context.Context // cancelled to cut retries short at shutdown
	cancel context.CancelFunc

	sent, failed atomic.Uint64
}

func (c *callbacks) init(cfg Config) {
	c.header, c.allow, c.route = cfg.CallbackHeader, cfg.Callbacks, cfg.Route
	c.sem = make(chan struct{}, callbackParallel)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.client = &fasthttp.Client{
		Name:                      "sluice",
		ReadTimeout:               callbackTimeout,
		WriteTimeout:              callbackTimeout,
		MaxConnsPerHost:           16,
		MaxResponseBodySize:       64 << 10,
		TLSConfig:                 cfg.TLSConfig,
		MaxIdemponentCallAttempts: 1,
		RetryIfErr:                func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
}

// callback starts the callback of dl's final outcome out, if the message
// names an allowed callback URL. It never blocks.
func (d *Drainer) callback(dl *store.Delivery, out *store.Outcome) {
	c := &d.cb
	if c.header == "" || (out.Phase != store.Delivered && out.Phase != store.Dead) {
		return
	}
	target := ""
	for _, h := range dl.Header {
		if strings.EqualFold(h.Name, c.header) {
			target = strings.TrimSpace(h.Value)
			break
		}
	}
	if target == "" {
		return
	}
	log := func() *slog.Logger {
		return d.log.With("seq", dl.ID.Seq(), "callback_host", callbackHost(target))
	}
	if !c.allow.Allows(target) {
		// Allowed at ingest, not by the policy in force now.
		c.failed.Add(1)
		log().Warn("callback URL is not in callbacks.allow; not called")
		return
	}
	ev := CallbackEvent{
		ID: dl.ID.String(), Route: d.route, Target: d.target.Name, Status: string(out.Phase),
		StatusCode: out.Attempt.Status, Attempts: dl.Attempt, At: out.Attempt.At.UTC(),
	}
	if out.Phase == store.Dead {
		ev.Error = out.Attempt.Error
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return // plain data; cannot fail
	}
	select {
	case c.sem <- struct{}{}:
	default:
		c.failed.Add(1)
		log().Warn("too many callbacks under way; this one is dropped", "limit", callbackParallel)
		return
	}
	c.mu.Lock()
	ctx := c.ctx
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.sem }()
		status, err := c.post(ctx, target, dl.ID.String(), body)
		if err != nil {
			c.failed.Add(1)
			log().Warn("callback failed; the message is not affected", "status", status, "err", err, "tries", callbackTries)
			return
		}
		c.sent.Add(1)
	}()
}

// post sends body to u, up to callbackTries times while the answer is not
// 2xx. It returns the last status (0 if none) and error.
func (c *callbacks) post(ctx context.Context, u, id string, body []byte) (int, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	wait := callbackBackoff
	var err error
	status := 0
	for try := 1; ; try++ {
		req.Reset()
		resp.Reset()
		req.SetRequestURI(u)
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.SetContentType("application/json")
		req.Header.Set(HeaderID, id)
		req.SetBodyRaw(body)
		err = c.client.DoTimeout(req, resp, callbackTimeout)
		status = 0
		if err == nil {
			status = resp.StatusCode()
			if status >= 200 && status <= 299 {
				return status, nil
			}
			err = errStatus(status)
		}
		if try >= callbackTries {
			return status, err
		}
		select {
		case <-ctx.Done():
			return status, err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

type errStatus int

func (e errStatus) Error() string { return "status " + strconv.Itoa(int(e)) }

// wait waits for the callbacks under way: their retries for at most
// callbackGrace, then only for the try in progress (callbackTimeout). It is
// called by Run once no attempt is left, so none is added meanwhile.
func (c *callbacks) wait(log *slog.Logger) {
	if c.header == "" {
		return
	}
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(callbackGrace):
		log.Info("shutdown: cutting callback retries short")
		c.mu.Lock()
		c.cancel()
		c.mu.Unlock()
		<-done
	}
	c.mu.Lock()
	if c.ctx.Err() != nil { // a later Run gets retries again
		c.ctx, c.cancel = context.WithCancel(context.Background())
	}
	c.mu.Unlock()
	c.client.CloseIdleConnections()
}

// callbackHost is the host of a callback URL, for logs: the rest may hold a token.
func callbackHost(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Host
	}
	return ""
}
