package drain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

func TestNewValidates(t *testing.T) {
	good := testTarget("a", "http://127.0.0.1:1")
	src := &buffer.Consumer{}
	tests := []struct {
		name string
		edit func(*policies.Target)
		src  Source
		want string
	}{
		{"no source", func(*policies.Target) {}, nil, "no source"},
		{"no name", func(t *policies.Target) { t.Name = "" }, src, "no name"},
		{"no url", func(t *policies.Target) { t.URL = nil }, src, "no URL"},
		{"ftp", func(t *policies.Target) { t.URL, _ = url.Parse("ftp://h/") }, src, "scheme"},
		{"no host", func(t *policies.Target) { t.URL, _ = url.Parse("http:///x") }, src, "no host"},
		{"negative rate", func(t *policies.Target) { t.Rate = policies.Rate{PerSecond: -1} }, src, "invalid rate"},
		{"fairness with batch", func(t *policies.Target) {
			t.Fairness = &policies.Fairness{Key: policies.KeySource{Header: "X-T"}}
			t.Batch = &policies.Batch{MaxMessages: 10}
		}, src, "fairness: fairness cannot be combined with batch (yet)"},
		{"fairness with ordering", func(t *policies.Target) {
			t.Fairness = &policies.Fairness{Key: policies.KeySource{Header: "X-T"}}
			t.Ordering = &policies.Ordering{Key: policies.KeySource{Header: "X-T"}}
		}, src, "fairness: fairness cannot be combined with ordering (yet)"},
		{"capture with batch", func(t *policies.Target) {
			t.CaptureResponse = &policies.Capture{MaxBytes: 10}
			t.Batch = &policies.Batch{MaxMessages: 10}
		}, src, "capture_response: capture_response keeps one message's answer"},
		{"ordering with batch", func(t *policies.Target) {
			t.Ordering = &policies.Ordering{Key: policies.KeySource{Header: "X-T"}}
			t.Batch = &policies.Batch{MaxMessages: 10}
		}, src, "ordering: ordering sends one message per key"},
		{"fairness without key", func(t *policies.Target) {
			t.Fairness = &policies.Fairness{}
		}, src, "fairness.key: fairness needs a key"},
		{"fairness without parking", func(t *policies.Target) {
			t.Fairness = &policies.Fairness{Key: policies.KeySource{Header: "X-T"}}
		}, newFakeSource(), "can park"},
		{"NaN window", func(t *policies.Target) {
			t.Windows = []policies.Window{{Rate: policies.Rate{PerSecond: math.NaN()}}}
		}, src, "window 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := good
			tt.edit(&target)
			_, err := New(Config{Route: "orders", Target: target}, tt.src)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v; want an error with %q", err, tt.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	u, _ := url.Parse("http://h")
	d, err := New(Config{Target: policies.Target{Name: "a", URL: u, Rate: policies.Rate{PerSecond: 200}}}, &buffer.Consumer{})
	if err != nil {
		t.Fatal(err)
	}
	got := d.Target()
	if got.Concurrency != 16 || got.Timeout != 10*time.Second || got.Burst != 20 || got.Timezone != time.UTC ||
		got.Retry.MaxAttempts != 10 || got.Retry.Initial != 500*ms || got.Retry.Max != 5*time.Minute {
		t.Errorf("defaults: %+v", got)
	}
	on := got.Retry.On
	if !on.Class5xx || !on.Timeout || !on.Connect || !on.Status(429) || !on.Status(408) || !on.Status(425) || on.Status(404) {
		t.Errorf("default retry.on: %+v", on)
	}
	if r := d.Stats().Rate; r != 200 {
		t.Errorf("Stats().Rate = %v, want 200", r)
	}
}

// TestDelivery: every message arrives once, as the client sent it, with the
// sluice headers; the store records the delivery.
func TestDelivery(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a", "b")
	const n = 30
	msgs := appendN(t, q, n, func(i int) *buffer.Message {
		m := &buffer.Message{
			Method: []string{"POST", "PUT"}[i%2],
			URI:    fmt.Sprintf("/api/orders?x=%d&y=a%%20b", i),
			Header: []buffer.Header{
				{Name: "Content-Type", Value: "application/json"},
				{Name: "x-request-tag", Value: strconv.Itoa(i)},
				{Name: "X-Multi", Value: "one"},
				{Name: "X-Multi", Value: "two"},
				{Name: "Connection", Value: "keep-alive, X-Hop"},
				{Name: "X-Hop", Value: "secret"},
				{Name: "Keep-Alive", Value: "timeout=5"},
				{Name: "Proxy-Authorization", Value: "Basic Zm9vOmJhcg=="},
				{Name: "Upgrade", Value: "h2c"},
				{Name: "TE", Value: "trailers"},
				{Name: "Host", Value: "client.example"},
				{Name: "Content-Length", Value: "999"},
				{Name: "X-Sluice-Attempt", Value: "forged"},
			},
			Body: fmt.Appendf(nil, "{\"order\":%d,\"card\":\"body-secret\",\"bin\":\"\x00\xff\"}", i),
		}
		if i%2 == 0 {
			m.IdempotencyKey = fmt.Sprintf("client-key-%d", i)
			m.Header = append(m.Header, buffer.Header{Name: "Idempotency-Key", Value: m.IdempotencyKey})
		}
		return m
	})

	var logs testutil.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	target := testTarget("a", ds.url+"/base")
	d, stop := startDrainer(t, Config{Target: target, Logger: logger}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "all deliveries recorded", func() bool { return d.Stats().Delivered == n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	hits := ds.snapshot()
	if len(hits) != n {
		t.Fatalf("downstream got %d requests, want %d", len(hits), n)
	}
	byID := map[string]hit{}
	for _, h := range hits {
		if _, dup := byID[h.id]; dup {
			t.Errorf("id %s delivered twice", h.id)
		}
		byID[h.id] = h
	}
	u, _ := url.Parse(ds.url)
	for i, m := range msgs {
		id := m.ID.String()
		h, ok := byID[id]
		if !ok {
			t.Errorf("message %d (%s) never arrived", i, id)
			continue
		}
		if h.method != m.Method {
			t.Errorf("%d: method %q, want %q", i, h.method, m.Method)
		}
		if want := fmt.Sprintf("/base/api/orders?x=%d&y=a%%20b", i); h.uri != want {
			t.Errorf("%d: uri %q, want %q", i, h.uri, want)
		}
		if h.host != u.Host {
			t.Errorf("%d: host %q, want %q", i, h.host, u.Host)
		}
		if !bytes.Equal(h.body, m.Body) {
			t.Errorf("%d: body %q, want %q", i, h.body, m.Body)
		}
		want := map[string]string{
			"Content-Type":         "application/json",
			"x-request-tag":        strconv.Itoa(i),
			HeaderID:               id,
			HeaderAttempt:          "1",
			HeaderEnqueuedAt:       m.EnqueuedAt.UTC().Format(time.RFC3339Nano),
			HeaderIdempotencyKey:   id,
			"Content-Length":       strconv.Itoa(len(m.Body)),
			"Host":                 u.Host,
			"X-Multi":              "one",
			"X-Hop":                "",
			"Connection":           "",
			"Keep-Alive":           "",
			"Proxy-Authorization":  "",
			"Upgrade":              "",
			"TE":                   "",
			"User-Agent":           "",
			"X-Sluice-Attempt-Bad": "",
		}
		if m.IdempotencyKey != "" {
			want[HeaderIdempotencyKey] = m.IdempotencyKey
		}
		for name, v := range want {
			got, ok := h.get(name)
			if v == "" && ok {
				t.Errorf("%d: header %s sent (%q); it must not be", i, name, got)
			}
			if v != "" && got != v {
				t.Errorf("%d: header %s = %q, want %q", i, name, got, v)
			}
		}
		multi, sluiceHeaders := 0, 0
		for _, kv := range h.header {
			if kv.Name == "X-Multi" {
				multi++
			}
			if strings.EqualFold(kv.Name, HeaderAttempt) || strings.EqualFold(kv.Name, HeaderIdempotencyKey) {
				sluiceHeaders++
			}
		}
		if multi != 2 || sluiceHeaders != 2 {
			t.Errorf("%d: %d X-Multi headers (want 2), %d attempt/key headers (want 2): %v", i, multi, sluiceHeaders, h.header)
		}
		enq, err := time.Parse(time.RFC3339Nano, want[HeaderEnqueuedAt])
		if err != nil || !enq.Equal(m.EnqueuedAt) {
			t.Errorf("%d: enqueued-at %q does not round-trip: %v", i, want[HeaderEnqueuedAt], err)
		}

		st := status(t, q, m.ID, "a")
		last, _ := st.Last()
		if st.Phase != buffer.Delivered || st.Attempts != 1 || last.Status != 200 || last.Error != "" {
			t.Errorf("%d: state %+v, want delivered after 1 attempt with status 200", i, st.State)
		}
		if other := status(t, q, m.ID, "b"); other.Phase != buffer.Queued {
			t.Errorf("%d: target b is %s; the drainer of a must not touch it", i, other.Phase)
		}
	}
	st := d.Stats()
	if st.Delivered != n || st.Attempts != n || st.Retried != 0 || st.Dead != 0 || st.InFlight != 0 || !math.IsInf(st.Rate, 1) {
		t.Errorf("stats %+v", st)
	}

	out := logs.String()
	if strings.Contains(out, "body-secret") || strings.Contains(out, "X-Hop") || strings.Contains(out, "Zm9v") {
		t.Errorf("logs contain bodies or headers:\n%s", out)
	}
	for _, attr := range []string{`"route":"orders"`, `"target":"a"`, `"seq":` + strconv.FormatUint(msgs[0].ID.Seq(), 10) + `,`, `"attempt":1`, `"status":200`} {
		if !strings.Contains(out, attr) {
			t.Errorf("logs lack %s:\n%.2000s", attr, out)
		}
	}
	// An id opens the message's status: logs name messages by seq only.
	for _, m := range msgs {
		if strings.Contains(out, m.ID.String()) {
			t.Fatalf("logs hold the id %s:\n%.2000s", m.ID, out)
		}
	}
}

// TestFanOut: two targets get everything, each at its own pace.
func TestFanOut(t *testing.T) {
	fast := newDownstream(t, nil)
	// 50ms a request: the slow target takes at least 1s, long enough that a
	// loaded CI machine (-race, a few hundred ms for the fast one) cannot
	// make the fast target look held back.
	slow := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) { time.Sleep(50 * ms) })
	_, q, _ := newQueue(t, "fast", "slow")
	const n = 40
	msgs := appendN(t, q, n, order)

	start := time.Now()
	ft, st := testTarget("fast", fast.url), testTarget("slow", slow.url)
	ft.Concurrency, st.Concurrency = 2, 2
	startDrainer(t, Config{Target: ft}, consumer(t, q, "fast"))
	startDrainer(t, Config{Target: st}, consumer(t, q, "slow"))
	var fastDone, slowDone time.Duration
	waitFor(t, 20*time.Second, "both targets", func() bool {
		if fastDone == 0 && len(fast.ids()) == n {
			fastDone = time.Since(start)
		}
		if slowDone == 0 && len(slow.ids()) == n {
			slowDone = time.Since(start)
		}
		return fastDone > 0 && slowDone > 0
	})
	t.Logf("fast target done after %v, slow after %v", fastDone, slowDone)
	// A request counts when it arrives, before its 50ms: the last of the
	// n/2 rounds of 2 adds nothing.
	if min := (n/2 - 1) * 50 * ms; slowDone < min {
		t.Errorf("slow target done after %v; it cannot take less than %v", slowDone, min)
	}
	if fastDone*2 > slowDone {
		t.Errorf("fast target done after %v, slow after %v: the slow one held the fast one back", fastDone, slowDone)
	}
	waitFor(t, 5*time.Second, "outcomes recorded", func() bool {
		for _, m := range msgs {
			if status(t, q, m.ID, "fast").Phase != buffer.Delivered || status(t, q, m.ID, "slow").Phase != buffer.Delivered {
				return false
			}
		}
		return true
	})
}

// TestRetryThenDeliver: 503 twice, then 200.
func TestRetryThenDeliver(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if h.n <= 2 {
			ctx.SetStatusCode(503)
		}
	})
	_, q, _ := newQueue(t, "a")
	const n = 10
	msgs := appendN(t, q, n, order)
	d, _ := startDrainer(t, Config{Target: testTarget("a", ds.url)}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == n })

	attempts := map[string][]int{}
	keys := map[string]map[string]bool{}
	for _, h := range ds.snapshot() {
		attempts[h.id] = append(attempts[h.id], h.attempt)
		k, _ := h.get(HeaderIdempotencyKey)
		if keys[h.id] == nil {
			keys[h.id] = map[string]bool{}
		}
		keys[h.id][k] = true
	}
	for _, m := range msgs {
		id := m.ID.String()
		if got := fmt.Sprint(attempts[id]); got != "[1 2 3]" {
			t.Errorf("%s: attempts %s, want [1 2 3]", id, got)
		}
		if len(keys[id]) != 1 || !keys[id][id] {
			t.Errorf("%s: idempotency keys %v, want the id on every attempt", id, keys[id])
		}
		st := status(t, q, m.ID, "a")
		if st.Phase != buffer.Delivered || st.Attempts != 3 || len(st.History) != 3 {
			t.Fatalf("%s: state %+v", id, st.State)
		}
		for i, wantStatus := range []int{503, 503, 200} {
			a := st.History[i]
			if a.N != i+1 || a.Status != wantStatus || (wantStatus == 503) != (a.Error == "status 503") || a.At.IsZero() {
				t.Errorf("%s: history[%d] = %+v", id, i, a)
			}
		}
	}
	if st := d.Stats(); st.Retried != 2*n || st.Attempts != 3*n || st.Dead != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestDeadAfterMaxAttempts: a target that always fails gets exactly
// MaxAttempts attempts.
func TestDeadAfterMaxAttempts(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(500) })
	_, q, _ := newQueue(t, "a")
	const n = 5
	msgs := appendN(t, q, n, order)
	target := testTarget("a", ds.url)
	target.Retry.MaxAttempts = 3
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "dead letters", func() bool { return d.Stats().Dead == n })
	time.Sleep(200 * ms) // more than the longest backoff: nothing else may come
	for _, m := range msgs {
		if got := ds.ids()[m.ID.String()]; got != 3 {
			t.Errorf("%s: %d attempts, want 3", m.ID, got)
		}
		st := status(t, q, m.ID, "a")
		last, _ := st.Last()
		if st.Phase != buffer.Dead || st.Attempts != 3 || last.Status != 500 || !strings.HasPrefix(last.Error, "status 500") {
			t.Errorf("%s: state %+v", m.ID, st.State)
		}
	}
	if st := d.Stats(); st.Retried != 2*n || st.Delivered != 0 || st.Attempts != 3*n {
		t.Errorf("stats %+v", st)
	}
	if st := d.Stats(); st.ByClass[OutcomeRetried][5] != 2*n || st.ByClass[OutcomeDead][5] != n || st.ByClass[OutcomeDelivered] != [6]uint64{} {
		t.Errorf("by class %v", st.ByClass)
	}
}

// TestDeadOnClientError: a 400 is not retried.
func TestDeadOnClientError(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(400) })
	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 3, order)
	d, _ := startDrainer(t, Config{Target: testTarget("a", ds.url)}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "dead letters", func() bool { return d.Stats().Dead == 3 })
	time.Sleep(100 * ms)
	if st := d.Stats(); st.ByClass[OutcomeDead][4] != 3 || st.ByClass[OutcomeDead][5] != 0 {
		t.Errorf("by class %v", st.ByClass)
	}
	for _, m := range msgs {
		if got := ds.ids()[m.ID.String()]; got != 1 {
			t.Errorf("%s: %d attempts, want 1", m.ID, got)
		}
		st := status(t, q, m.ID, "a")
		if last, _ := st.Last(); st.Phase != buffer.Dead || st.Attempts != 1 || last.Status != 400 || last.Error != "status 400" {
			t.Errorf("%s: state %+v", m.ID, st.State)
		}
	}
}

// TestRetryAfter: a 429 with Retry-After: 1 is tried again no sooner than 1s later.
func TestRetryAfter(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if h.n == 1 {
			ctx.Response.Header.Set("retry-after", "1")
			ctx.SetStatusCode(429)
		}
	})
	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 2, order)
	d, _ := startDrainer(t, Config{Target: testTarget("a", ds.url)}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == 2 })
	first := map[string]time.Time{}
	for _, h := range ds.snapshot() {
		if h.n == 1 {
			first[h.id] = h.at
		} else if gap := h.at.Sub(first[h.id]); gap < time.Second || gap > 3*time.Second {
			t.Errorf("%s: retried %v after the 429; want about 1s", h.id, gap)
		}
	}
	for _, m := range msgs {
		st := status(t, q, m.ID, "a")
		if st.Phase != buffer.Delivered || st.Attempts != 2 || st.History[0].Status != 429 {
			t.Errorf("%s: state %+v", m.ID, st.State)
		}
	}
}

// TestConnectRefused: a target that is down is retried and gets the
// messages once it listens.
func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 3, order)
	target := testTarget("a", "http://"+addr)
	target.Retry.MaxAttempts = 1000
	target.Retry.Initial, target.Retry.Max = 20*ms, 100*ms
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "failed attempts", func() bool { return d.Stats().Retried >= 6 })

	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	ds := serveDownstream(t, ln, nil)
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == 3 })
	for _, m := range msgs {
		st := status(t, q, m.ID, "a")
		if st.Phase != buffer.Delivered || st.Attempts < 2 {
			t.Fatalf("%s: state %+v", m.ID, st.State)
		}
		if a := st.History[0]; a.Error != "connect: connection refused" || a.Status != 0 {
			t.Errorf("%s: first attempt %+v, want connection refused", m.ID, a)
		}
		if got := ds.ids()[m.ID.String()]; got != 1 {
			t.Errorf("%s arrived %d times", m.ID, got)
		}
	}
}

// TestTimeout: an attempt that takes longer than Target.Timeout is retried.
func TestTimeout(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if h.n == 1 {
			time.Sleep(400 * ms)
		}
	})
	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 2, order)
	target := testTarget("a", ds.url)
	target.Timeout = 100 * ms
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == 2 })
	for _, m := range msgs {
		st := status(t, q, m.ID, "a")
		if st.Phase != buffer.Delivered || st.Attempts != 2 {
			t.Fatalf("%s: state %+v", m.ID, st.State)
		}
		a := st.History[0]
		if a.Error != "timeout after 100ms" || a.Status != 0 || a.Duration < 100*ms || a.Duration > 350*ms {
			t.Errorf("%s: first attempt %+v, want a timeout after 100ms", m.ID, a)
		}
	}
}

// TestTLS: https targets, with a trusted and an untrusted certificate.
func TestTLS(t *testing.T) {
	var mu sync.Mutex
	got := map[string]string{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.Header.Get(HeaderID)] = r.URL.RequestURI()
		mu.Unlock()
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusting client's handshakes fail, as they should
	srv.StartTLS()
	defer srv.Close()
	_, q, _ := newQueue(t, "good", "bad")
	msgs := appendN(t, q, 2, order)

	good := testTarget("good", srv.URL+"/tls")
	tlsConfig := srv.Client().Transport.(*http.Transport).TLSClientConfig
	startDrainer(t, Config{Target: good, TLSConfig: tlsConfig}, consumer(t, q, "good"))
	bad := testTarget("bad", srv.URL)
	bad.Retry.MaxAttempts = 2
	dBad, _ := startDrainer(t, Config{Target: bad}, consumer(t, q, "bad"))

	waitFor(t, 10*time.Second, "deliveries over TLS", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	waitFor(t, 10*time.Second, "dead letters for the untrusted target", func() bool { return dBad.Stats().Dead == 2 })
	for _, m := range msgs {
		mu.Lock()
		uri := got[m.ID.String()]
		mu.Unlock()
		if uri != "/tls"+m.URI {
			t.Errorf("%s: uri %q", m.ID, uri)
		}
		st := status(t, q, m.ID, "bad")
		if st.Phase != buffer.Dead || st.Attempts != 2 || !strings.HasPrefix(st.History[0].Error, "connect: tls: ") {
			t.Errorf("%s: untrusted target state %+v", m.ID, st.State)
		}
	}
}

// TestRate: the target never gets more than burst + rate*T in any T.
func TestRate(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a")
	appendN(t, q, 500, order)
	target := testTarget("a", ds.url)
	target.Rate = policies.Rate{PerSecond: 100}
	target.Burst = 10
	target.Concurrency = 16
	d, stop := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 5*time.Second, "the first request", func() bool { return ds.count() > 0 })
	time.Sleep(3 * time.Second)
	stop()

	hits := ds.snapshot()
	first := hits[0].at
	var times []time.Time
	for _, h := range hits {
		if h.at.Sub(first) <= 3*time.Second {
			times = append(times, h.at)
		}
	}
	for i, ti := range times {
		n := 0
		for _, tj := range times[i:] {
			if tj.Sub(ti) < time.Second {
				n++
			}
		}
		if n > 100+10+1 {
			t.Fatalf("%d requests in the second from %v; the limit is 110", n, ti.Sub(first))
		}
	}
	span := times[len(times)-1].Sub(first).Seconds()
	rate := float64(len(times)-target.Burst) / span
	t.Logf("%d requests in %.2fs: %.1f/s after the burst", len(times), span, rate)
	if rate < 90 || rate > 110 {
		t.Errorf("rate %.1f/s, want 100/s within 10%%", rate)
	}
	if r := d.Stats().Rate; r != 100 {
		t.Errorf("Stats().Rate = %v", r)
	}
}

// TestConcurrency: never more than Concurrency requests at once, and the
// drainer does use them all.
func TestConcurrency(t *testing.T) {
	ds := newDownstream(t, func(*hit, *fasthttp.RequestCtx) { time.Sleep(50 * ms) })
	_, q, _ := newQueue(t, "a")
	const n = 40
	appendN(t, q, n, order)
	target := testTarget("a", ds.url)
	target.Concurrency = 4
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	maxInFlight := 0
	waitFor(t, 10*time.Second, "deliveries", func() bool {
		maxInFlight = max(maxInFlight, d.Stats().InFlight)
		return d.Stats().Delivered == n
	})
	_, maxActive := ds.gauge()
	if maxActive != 4 {
		t.Errorf("at most %d requests at once; want exactly 4", maxActive)
	}
	if maxInFlight > 4 {
		t.Errorf("Stats().InFlight reached %d", maxInFlight)
	}
}

// TestPauseResumeSetRate exercises the runtime controls.
func TestPauseResumeSetRate(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a")
	target := testTarget("a", ds.url)
	target.Concurrency = 4
	d, err := New(Config{Route: "orders", Target: target, Logger: quietLogger()}, consumer(t, q, "a"))
	if err != nil {
		t.Fatal(err)
	}
	d.Pause()
	run(t, d)
	msgs := appendN(t, q, 20, order)
	time.Sleep(300 * ms)
	if n := ds.count(); n != 0 {
		t.Fatalf("paused drainer sent %d requests", n)
	}
	if st := d.Stats(); st.Rate != 0 || !st.Paused {
		t.Errorf("paused: stats %+v", st)
	}
	if ph := status(t, q, msgs[0].ID, "a").Phase; ph != buffer.Queued {
		t.Errorf("paused: first message is %s; held-back messages must stay queued", ph)
	}

	d.Resume()
	waitFor(t, 5*time.Second, "deliveries after Resume", func() bool { return ds.count() == 20 })

	// 5/s with burst 1: at most 1 + 5 in the first second.
	d.SetRate(policies.Rate{PerSecond: 5})
	if r := d.Stats().Rate; r != 5 {
		t.Errorf("Stats().Rate = %v after SetRate(5/s)", r)
	}
	start := time.Now()
	appendN(t, q, 20, order)
	time.Sleep(time.Second)
	got := ds.count() - 20
	if got > 1+5+1 || got < 3 {
		t.Errorf("%d requests in %v at 5/s with burst 1", got, time.Since(start))
	}
	d.SetRate(unlimited)
	waitFor(t, 5*time.Second, "deliveries after SetRate(unlimited)", func() bool { return ds.count() == 40 })

	d.SetRate(policies.Rate{}) // zero: paused by rate
	appendN(t, q, 5, order)
	time.Sleep(300 * ms)
	if n := ds.count(); n != 40 {
		t.Fatalf("rate 0: %d requests sent", n-40)
	}
	if st := d.Stats(); st.Rate != 0 || st.Paused {
		t.Errorf("rate 0: stats %+v", st)
	}
	d.ResetRate()
	waitFor(t, 5*time.Second, "deliveries after ResetRate", func() bool { return ds.count() == 45 })
	if got := len(ds.ids()); got != 45 {
		t.Errorf("%d distinct ids, want 45", got)
	}
}

// TestWindowPause: a window with rate 0 holds everything until it ends, and
// the drainer starts exactly at its end.
func TestWindowPause(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 5, order)
	target := testTarget("a", ds.url)
	target.Windows = []policies.Window{{From: 11 * 60, To: 13 * 60, HasBetween: true, Rate: policies.Rate{}}}
	// A clock that reads 12:59:59.4 UTC at start and runs at real speed.
	base := time.Date(2025, 1, 6, 12, 59, 59, 400e6, time.UTC)
	start := time.Now()
	now := func() time.Time { return base.Add(time.Since(start)) }
	d, _ := startDrainer(t, Config{Target: target, Now: now}, consumer(t, q, "a"))
	time.Sleep(200 * ms)
	if n := ds.count(); n != 0 {
		t.Fatalf("%d requests inside a rate-0 window", n)
	}
	if st := d.Stats(); st.Rate != 0 || st.Paused {
		t.Errorf("in the window: stats %+v", st)
	}
	waitFor(t, 5*time.Second, "deliveries after the window", func() bool { return d.Stats().Delivered == 5 })
	hits := ds.snapshot()
	if wait := hits[0].at.Sub(start); wait < 600*ms {
		t.Errorf("first request %v after start; the window ends at 600ms", wait)
	}
	end := time.Date(2025, 1, 6, 13, 0, 0, 0, time.UTC)
	for _, m := range msgs {
		if a := status(t, q, m.ID, "a").History[0]; a.At.Before(end) {
			t.Errorf("%s attempted at %v, inside the window", m.ID, a.At)
		}
	}
	if r := d.Stats().Rate; !math.IsInf(r, 1) {
		t.Errorf("after the window: rate %v", r)
	}
}

// TestShutdown: cancelling Run waits for the attempts in flight and records
// them; a new drainer on the reopened store delivers the rest.
func TestShutdown(t *testing.T) {
	const n = 20
	f := fourInFlight(t, n)
	slow, d, q, msgs := f.slow, f.d, f.q, f.msgs
	begin := time.Now()
	if err := f.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(begin); took > f.target.Timeout+time.Second {
		t.Errorf("Run took %v to return", took)
	}
	stats := d.Stats()
	if stats.InFlight != 0 || stats.Unrecorded != 0 || stats.Delivered != uint64(slow.count()) {
		t.Errorf("after Run: stats %+v, downstream got %d", stats, slow.count())
	}
	for id := range slow.ids() {
		m := msgByID(t, msgs, id)
		if ph := status(t, q, m.ID, "a").Phase; ph != buffer.Delivered {
			t.Errorf("%s was sent before shutdown but is %s", id, ph)
		}
	}
	if err := f.st.Close(); err != nil {
		t.Fatal(err)
	}

	q2, fast := drainReopened(t, f.dir, "the rest", uint64(n-slow.count()))
	before, after := slow.ids(), fast.ids()
	for _, m := range msgs {
		id := m.ID.String()
		if before[id]+after[id] == 0 {
			t.Errorf("%s lost", id)
		}
		if before[id] > 0 && after[id] > 0 {
			t.Errorf("%s delivered again although its outcome was recorded", id)
		}
		if ph := status(t, q2, m.ID, "a").Phase; ph != buffer.Delivered {
			t.Errorf("%s is %s", id, ph)
		}
	}
}

// TestStoreClosedUnderDrainer: outcomes that cannot be recorded are not lost;
// the messages are attempted again after a restart, with the same key.
func TestStoreClosedUnderDrainer(t *testing.T) {
	const n = 8
	f := fourInFlight(t, n)
	slow, msgs := f.slow, f.msgs
	if err := f.st.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "outcomes refused", func() bool { return f.d.Stats().Unrecorded == 4 })
	if err := f.stop(); err != nil && !errors.Is(err, buffer.ErrClosed) {
		t.Fatalf("Run: %v", err)
	}

	q2, fast := drainReopened(t, f.dir, "everything", n)
	keys := map[string]string{}
	for _, h := range slow.snapshot() {
		keys[h.id], _ = h.get(HeaderIdempotencyKey)
	}
	for _, h := range fast.snapshot() {
		k, _ := h.get(HeaderIdempotencyKey)
		if old, ok := keys[h.id]; ok && old != k {
			t.Errorf("%s: key %q, was %q", h.id, k, old)
		}
	}
	for _, m := range msgs {
		id := m.ID.String()
		if fast.ids()[id] != 1 {
			t.Errorf("%s arrived %d times after the restart, want 1", id, fast.ids()[id])
		}
		if ph := status(t, q2, m.ID, "a").Phase; ph != buffer.Delivered {
			t.Errorf("%s is %s", id, ph)
		}
	}
}

// inFlight is a drainer caught with requests in flight (fourInFlight).
type inFlight struct {
	dir    string
	st     *buffer.Store
	q      *buffer.Queue
	msgs   []*buffer.Message
	slow   *downstream
	target policies.Target
	d      *Drainer
	stop   func() error
}

// fourInFlight appends n orders to a store in a new directory and runs a
// drainer on them, at concurrency 4, against a downstream that takes
// 300 ms an answer, until 4 requests are in flight (within 5 s).
func fourInFlight(t *testing.T, n int) inFlight {
	t.Helper()
	f := inFlight{dir: t.TempDir()}
	f.slow = newDownstream(t, func(*hit, *fasthttp.RequestCtx) { time.Sleep(300 * ms) })
	f.st = openStore(t, f.dir, buffer.SyncAlways)
	f.q = buftest.Queue(t, f.st, "orders", "a")
	f.msgs = appendN(t, f.q, n, order)
	f.target = testTarget("a", f.slow.url)
	f.target.Concurrency = 4
	f.d, f.stop = startDrainer(t, Config{Target: f.target}, consumer(t, f.q, "a"))
	waitFor(t, 5*time.Second, "requests in flight", func() bool { a, _ := f.slow.gauge(); return a == 4 })
	return f
}

// drainReopened opens the store in dir again and drains it to a new, quick
// downstream until want messages are delivered (within 10 s, waiting for
// what); it returns the queue and that downstream.
func drainReopened(t *testing.T, dir, what string, want uint64) (*buffer.Queue, *downstream) {
	t.Helper()
	fast := newDownstream(t, nil)
	q := buftest.Queue(t, openStore(t, dir, buffer.SyncAlways), "orders", "a")
	d, _ := startDrainer(t, Config{Target: testTarget("a", fast.url)}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, what, func() bool { return d.Stats().Delivered == want })
	return q, fast
}

func msgByID(t *testing.T, msgs []*buffer.Message, id string) *buffer.Message {
	t.Helper()
	for _, m := range msgs {
		if m.ID.String() == id {
			return m
		}
	}
	t.Fatalf("no message %s", id)
	return nil
}

func TestRunTwice(t *testing.T) {
	_, q, _ := newQueue(t, "a")
	d, _ := startDrainer(t, Config{Target: testTarget("a", "http://127.0.0.1:1")}, consumer(t, q, "a"))
	waitFor(t, time.Second, "Run to start", func() bool { return d.running.Load() })
	if err := d.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Run: %v", err)
	}
}

// TestRetryDoesNotBlock: a message waiting for its retry does not hold back
// the ones behind it, even with one slot.
func TestRetryDoesNotBlock(t *testing.T) {
	var failID sync.Map
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if _, ok := failID.Load(h.id); ok && h.n == 1 {
			ctx.SetStatusCode(503)
		}
	})
	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 10, order)
	first := msgs[0]
	for _, m := range msgs {
		if m.Seq < first.Seq {
			first = m
		}
	}
	failID.Store(first.ID.String(), true)
	target := testTarget("a", ds.url)
	target.Concurrency = 1
	target.Retry.Initial, target.Retry.Max = 500*ms, 500*ms
	d, _ := startDrainer(t, Config{Target: target}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == 10 })
	hits := ds.snapshot()
	if len(hits) != 11 || hits[0].id != first.ID.String() || hits[10].id != first.ID.String() {
		t.Fatalf("want the failing message first and last of 11 requests; got %d requests", len(hits))
	}
	if gap := hits[10].at.Sub(hits[0].at); gap < 250*ms {
		t.Errorf("retried after %v; the backoff is at least 250ms", gap)
	}
}

// fakeSource hands out an endless supply of messages and watches how the
// drainer takes them.
type fakeSource struct {
	ready chan struct{}

	mu        sync.Mutex
	seq       int
	asks      []int
	out       int // fetched, neither completed nor released
	maxOut    int
	completed int
	released  int
}

func newFakeSource() *fakeSource { return &fakeSource{ready: make(chan struct{}, 1)} }

func (f *fakeSource) Fetch(n int, now time.Time) ([]*buffer.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks = append(f.asks, n)
	var out []*buffer.Delivery
	for range n {
		f.seq++
		id, err := buffer.ParseID(fmt.Sprintf("%026d", f.seq))
		if err != nil {
			return out, err
		}
		out = append(out, &buffer.Delivery{Message: &buffer.Message{ID: id, Method: "POST", URI: "/x"}, Attempt: 1})
	}
	f.out += len(out)
	f.maxOut = max(f.maxOut, f.out)
	return out, nil
}

func (f *fakeSource) Ready() <-chan struct{}       { return f.ready }
func (f *fakeSource) NextRetry() (time.Time, bool) { return time.Time{}, false }

func (f *fakeSource) Complete(ctx context.Context, d *buffer.Delivery, out buffer.Outcome) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out--
	f.completed++
	return nil
}

func (f *fakeSource) Release(d *buffer.Delivery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out--
	f.released++
}

// TestFetchBounded: the drainer asks for no more than it can send now: free
// slots, and tokens when the rate is finite.
func TestFetchBounded(t *testing.T) {
	ds := newDownstream(t, func(*hit, *fasthttp.RequestCtx) { time.Sleep(20 * ms) })
	t.Run("slots", func(t *testing.T) {
		src := newFakeSource()
		target := testTarget("a", ds.url)
		target.Concurrency = 3
		d, stop := startDrainer(t, Config{Target: target}, src)
		waitFor(t, 5*time.Second, "deliveries", func() bool { return d.Stats().Delivered >= 30 })
		stop()
		src.mu.Lock()
		defer src.mu.Unlock()
		for _, n := range src.asks {
			if n < 1 || n > 3 {
				t.Fatalf("Fetch(%d) with 3 slots", n)
			}
		}
		// Out at once: Concurrency sending, three times as many fetched
		// ahead (the chain, chainDepth), and those whose outcome the
		// recorder has not yet handed back (at most one slot's worth with
		// this fast source).
		if src.maxOut > (chainDepth+2)*3 || src.out != 0 {
			t.Errorf("%d messages out at most (want <= (chainDepth+2)*concurrency), %d out after Run", src.maxOut, src.out)
		}
	})
	t.Run("tokens", func(t *testing.T) {
		src := newFakeSource()
		target := testTarget("a", ds.url)
		target.Concurrency = 8
		target.Rate, target.Burst = policies.Rate{PerSecond: 50}, 2
		d, stop := startDrainer(t, Config{Target: target}, src)
		waitFor(t, 5*time.Second, "deliveries", func() bool { return d.Stats().Delivered >= 10 })
		stop()
		src.mu.Lock()
		defer src.mu.Unlock()
		for _, n := range src.asks {
			if n < 1 || n > 2 {
				t.Fatalf("Fetch(%d) with a bucket of 2 tokens", n)
			}
		}
		// Nothing fetched is given back (released), and out at once are
		// the bucket's 2, one more token (20 ms) and those whose outcome
		// the recorder has not yet handed back: under load, a few more.
		if src.maxOut > 2+1+3 || src.released != 0 {
			t.Errorf("%d messages out at most, %d released; held-back messages must stay in the store", src.maxOut, src.released)
		}
	})
}

// TestPathKeptAsReceived: the stored path is not normalised on the way out.
func TestPathKeptAsReceived(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a")
	// (A bare trailing "?" is dropped by fasthttp; it means the same.)
	uris := []string{"/a%2Fb//c/../d?q=%2F&r=a+b", "/x/./y", "/%7Euser/caf%C3%A9"}
	appendN(t, q, len(uris), func(i int) *buffer.Message { return &buffer.Message{Method: "GET", URI: uris[i]} })
	d, _ := startDrainer(t, Config{Target: testTarget("a", ds.url+"/base/")}, consumer(t, q, "a"))
	waitFor(t, 5*time.Second, "deliveries", func() bool { return d.Stats().Delivered == uint64(len(uris)) })
	got := map[string]bool{}
	for _, h := range ds.snapshot() {
		got[h.uri] = true
	}
	for _, u := range uris {
		if !got["/base"+u] {
			t.Errorf("%q did not arrive as /base%s; got %v", u, u, got)
		}
	}
}

// TestUnrecordedGivenBackAtRunEnd: outcomes that cannot be recorded leave
// their messages in flight until Run returns; the next Run of the same
// drainer (same consumer, same process) attempts them again, so nothing is
// lost without a restart.
func TestUnrecordedGivenBackAtRunEnd(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprint("batch=", batch), func(t *testing.T) {
			ds := newDownstream(t, nil)
			_, q, _ := newQueue(t, "a")
			msgs := appendN(t, q, 6, order)
			var fails atomic.Int32
			fails.Store(3) // the first three outcomes cannot be recorded
			src := &failingComplete{Consumer: consumer(t, q, "a"), fail: func(*buffer.Delivery) bool {
				return fails.Add(-1) >= 0
			}}
			tg := testTarget("a", ds.url)
			if batch {
				tg = batchTarget(ds.url, policies.Batch{MaxMessages: 2, MaxBytes: 1 << 20, MaxWait: 10 * ms})
				tg.Name = "a"
			}
			d, err := New(Config{Route: "orders", Target: tg, Logger: quietLogger()}, src)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, d)
			waitFor(t, 10*time.Second, "outcomes", func() bool { st := d.Stats(); return st.Delivered+st.Unrecorded == 6 })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if n := d.Stats().Unrecorded; n != 3 {
				t.Fatalf("%d outcomes unrecorded, want 3", n)
			}
			stop = run(t, d)
			waitFor(t, 10*time.Second, "the unrecorded ones delivered again", func() bool { return d.Stats().Delivered == 6 })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if ph := status(t, q, m.ID, "a").Phase; ph != buffer.Delivered {
					t.Errorf("%s is %s", m.ID, ph)
				}
			}
		})
	}
}

// TestOutcomeRetriedUntilRecorded: writes of outcomes that fail with ErrIO
// (a full disk) are tried again until they succeed: every message is sent
// once and recorded, none is given back to be sent again.
func TestOutcomeRetriedUntilRecorded(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a")
	msgs := appendN(t, q, 6, order)
	var fails atomic.Int32
	fails.Store(5) // the first five writes fail, whichever outcomes they carry
	src := &failingComplete{Consumer: consumer(t, q, "a"), err: fmt.Errorf("%w: injected: %w", buffer.ErrIO, syscall.ENOSPC), fail: func(*buffer.Delivery) bool {
		return fails.Add(-1) >= 0
	}}
	d, err := New(Config{Route: "orders", Target: testTarget("a", ds.url), Logger: quietLogger()}, src)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, d)
	waitFor(t, 10*time.Second, "outcomes", func() bool { return d.Stats().Delivered == 6 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.Unrecorded != 0 {
		t.Fatalf("%d outcomes unrecorded; failed writes must be retried", st.Unrecorded)
	}
	if n := ds.count(); n != 6 {
		t.Fatalf("downstream got %d requests for 6 messages", n)
	}
	for _, m := range msgs {
		if ph := status(t, q, m.ID, "a").Phase; ph != buffer.Delivered {
			t.Errorf("%s is %s", m.ID, ph)
		}
	}
}
