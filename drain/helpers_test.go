package drain

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/internal/testutil"
)

const ms = time.Millisecond

// hit is one request as the test downstream received it.
type hit struct {
	at      time.Time
	method  string
	uri     string
	host    string
	header  []buffer.Header // names as sent
	body    []byte
	id      string
	attempt int
	n       int // how many requests with this id came before, + 1
	status  int // the status code answered
}

func (h *hit) get(name string) (string, bool) {
	for _, kv := range h.header {
		if kv.Name == name {
			return kv.Value, true
		}
	}
	return "", false
}

// downstream is a fasthttp server on 127.0.0.1 that records what it gets.
// respond, if set, answers; the default is 200.
type downstream struct {
	url     string
	respond func(h *hit, ctx *fasthttp.RequestCtx)

	mu        sync.Mutex
	hits      []hit
	perID     map[string]int
	active    int
	maxActive int
}

func newDownstream(t testing.TB, respond func(h *hit, ctx *fasthttp.RequestCtx)) *downstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveDownstream(t, ln, respond)
}

func serveDownstream(t testing.TB, ln net.Listener, respond func(h *hit, ctx *fasthttp.RequestCtx)) *downstream {
	ds := &downstream{url: "http://" + ln.Addr().String(), respond: respond, perID: map[string]int{}}
	testutil.ServeOn(t, ln, &fasthttp.Server{Handler: ds.handle, DisableHeaderNamesNormalizing: true})
	return ds
}

func (ds *downstream) handle(ctx *fasthttp.RequestCtx) {
	h := hit{
		at:     time.Now(),
		method: string(ctx.Method()),
		uri:    string(ctx.RequestURI()),
		host:   string(ctx.Host()),
		body:   append([]byte(nil), ctx.PostBody()...),
	}
	for k, v := range ctx.Request.Header.All() {
		h.header = append(h.header, buffer.Header{Name: string(k), Value: string(v)})
	}
	h.id, _ = h.get(HeaderID)
	a, _ := h.get(HeaderAttempt)
	h.attempt, _ = strconv.Atoi(a)
	ds.mu.Lock()
	ds.perID[h.id]++
	h.n = ds.perID[h.id]
	idx := len(ds.hits)
	ds.hits = append(ds.hits, h)
	ds.active++
	ds.maxActive = max(ds.maxActive, ds.active)
	ds.mu.Unlock()
	if ds.respond != nil {
		ds.respond(&h, ctx)
	}
	ds.mu.Lock()
	ds.hits[idx].status = ctx.Response.StatusCode()
	ds.active--
	ds.mu.Unlock()
}

func (ds *downstream) snapshot() []hit {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return slices.Clone(ds.hits)
}

func (ds *downstream) count() int {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return len(ds.hits)
}

func (ds *downstream) ids() map[string]int {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	out := make(map[string]int, len(ds.perID))
	for k, v := range ds.perID {
		out[k] = v
	}
	return out
}

func (ds *downstream) gauge() (active, maxActive int) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.active, ds.maxActive
}

// openStore opens a store in dir, closed when the test ends.
func openStore(t testing.TB, dir string, sync buffer.SyncMode) *buffer.Store {
	t.Helper()
	return buftest.Open(t, buffer.Config{Dir: dir, Sync: sync, Logger: quietLogger()})
}

// newQueue opens a store in a temporary directory and its queue "orders".
func newQueue(t testing.TB, targets ...string) (*buffer.Store, *buffer.Queue, string) {
	t.Helper()
	dir := t.TempDir()
	st := openStore(t, dir, buffer.SyncAlways)
	return st, buftest.Queue(t, st, "orders", targets...), dir
}

func consumer(t testing.TB, q *buffer.Queue, target string) *buffer.Consumer {
	t.Helper()
	c, err := q.Consumer(target)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// appendN appends n messages made by mk, 64 at a time (they share commits),
// and returns them in order, with ids set.
func appendN(t testing.TB, q *buffer.Queue, n int, mk func(i int) *buffer.Message) []*buffer.Message {
	t.Helper()
	msgs := make([]*buffer.Message, n)
	for i := range msgs {
		msgs[i] = mk(i)
	}
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, m := range msgs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := q.Append(context.Background(), m); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return msgs
}

func order(i int) *buffer.Message {
	return &buffer.Message{
		Method: "POST",
		URI:    "/api/orders?x=" + strconv.Itoa(i),
		Header: []buffer.Header{{Name: "Content-Type", Value: "application/json"}},
		Body:   fmt.Appendf(nil, `{"order":%d}`, i),
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var defaultOn = policies.RetryOn{Codes: map[int]bool{408: true, 425: true, 429: true}, Class5xx: true, Timeout: true, Connect: true}

// testTarget is a fast, unlimited target with quick retries. Its breaker
// opens only after 1000 failures in a row, so that tests of retries are not
// paused by it; breaker tests set their own.
func testTarget(name, rawURL string) policies.Target {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(err)
	}
	return policies.Target{
		Name: name, URL: u, Rate: unlimited, Burst: 1, Concurrency: 8, Timeout: 2 * time.Second,
		Timezone: time.UTC,
		Retry:    policies.Retry{MaxAttempts: 5, Initial: 10 * ms, Max: 50 * ms, On: defaultOn},
		Breaker:  policies.Breaker{Failures: 1000, Cooldown: 100 * ms, MaxCooldown: time.Second},
	}
}

// startDrainer runs a drainer until the returned stop is called (or the test
// ends); stop cancels it, waits for Run and returns its error.
func startDrainer(t testing.TB, cfg Config, src Source) (*Drainer, func() error) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.Route == "" {
		cfg.Route = "orders"
	}
	d, err := New(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	return d, run(t, d)
}

func run(t testing.TB, d *Drainer) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = fmt.Errorf("Run did not return within 15s of cancel")
				t.Error(runErr)
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitFor polls cond until it holds or timeout passes.
var waitFor = testutil.WaitFor

// status returns the message's state for target.
func status(t testing.TB, q *buffer.Queue, id buffer.ID, target string) buffer.TargetStatus {
	t.Helper()
	_, sts, err := q.Lookup(id)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", id, err)
	}
	for _, s := range sts {
		if s.Target == target {
			return s
		}
	}
	t.Fatalf("Lookup(%s): no target %q", id, target)
	return buffer.TargetStatus{}
}

var unlimited = policies.Rate{Unlimited: true}
