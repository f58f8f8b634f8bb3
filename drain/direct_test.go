package drain

import (
	"errors"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

func TestTryDirectSharesBucketAndSlots(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "inv")
	c, _ := q.Consumer("inv")
	tg := testTarget("inv", ds.url)
	tg.Rate, tg.Burst, tg.Concurrency = policies.Rate{PerSecond: 1.0 / 3600}, 3, 2 // 3 tokens, then one an hour
	d, err := New(Config{Target: tg, Logger: quietLogger()}, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.TryDirect(); ok {
		t.Fatal("TryDirect before Run")
	}
	select {
	case <-d.Ready():
		t.Fatal("Ready closed before Run")
	default:
	}
	stop := run(t, d)
	select { // Ready promises that TryDirect can succeed from then on
	case <-d.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("Ready not closed 5s after Run started")
	}

	rel1, ok1 := d.TryDirect()
	rel2, ok2 := d.TryDirect()
	if !ok1 || !ok2 {
		t.Fatal("two slots and three tokens: TryDirect failed")
	}
	if _, ok := d.TryDirect(); ok {
		t.Fatal("a third direct call with concurrency 2")
	}
	rel1()
	rel1() // idempotent
	rel3, ok := d.TryDirect()
	if !ok {
		t.Fatal("slot freed, token left: TryDirect failed")
	}
	rel2()
	rel3()
	if _, ok := d.TryDirect(); ok {
		t.Fatal("bucket empty (burst 3 spent): TryDirect succeeded")
	}
	// The queued message waits for the same bucket: no token, no delivery.
	if _, err := q.Append(t.Context(), order(1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * ms)
	if n := len(ds.snapshot()); n != 0 {
		t.Fatalf("drainer sent %d with the bucket spent by direct calls", n)
	}
	d.Pause()
	if _, ok := d.TryDirect(); ok {
		t.Fatal("TryDirect while paused")
	}
	stop()
	if _, ok := d.TryDirect(); ok {
		t.Fatal("TryDirect after Run returned")
	}
}

func TestForward(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		switch string(ctx.QueryArgs().Peek("x")) {
		case "503":
			ctx.SetStatusCode(503)
		case "400":
			ctx.SetStatusCode(400)
		default:
			ctx.SetStatusCode(201)
			ctx.SetBodyString("made")
		}
	})
	_, q, _ := newQueue(t, "inv")
	c, _ := q.Consumer("inv")
	tg := testTarget("inv", ds.url+"/base")
	d, err := New(Config{Target: tg, Logger: quietLogger()}, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, cse := range []struct {
		x      string
		status int
		retry  bool
		ok     bool
	}{{"1", 201, false, true}, {"503", 503, true, false}, {"400", 400, false, false}} {
		m := order(0)
		m.URI = "/api/orders?x=" + cse.x
		m.IdempotencyKey = "key-" + cse.x
		m.EnqueuedAt = time.Now()
		m.Header = append(m.Header, buffer.Header{Name: "Connection", Value: "close"})
		var resp fasthttp.Response
		retry, err := d.Forward(m, &resp)
		if resp.StatusCode() != cse.status || retry != cse.retry || (err == nil) != cse.ok ||
			(!cse.ok && !errors.Is(err, ErrForwardStatus)) {
			t.Errorf("x=%s: %d retry=%v err=%v", cse.x, resp.StatusCode(), retry, err)
		}
	}
	hits := ds.snapshot()
	if len(hits) != 3 {
		t.Fatalf("%d hits", len(hits))
	}
	h := hits[0]
	key, _ := h.get(HeaderIdempotencyKey)
	_, hasID := h.get(HeaderID)
	_, hasConn := h.get("Connection")
	if h.uri != "/base/api/orders?x=1" || key != "key-1" || hasID || hasConn || h.attempt != 1 || string(h.body) != `{"order":0}` {
		t.Fatalf("forwarded as %+v", h)
	}
	st := d.Stats()
	if st.Forwarded != 1 || st.ForwardFailed != 2 || st.Attempts != 3 {
		t.Fatalf("stats %+v", st)
	}
	// Connection failures are retryable.
	tg.URL.Host = "127.0.0.1:1"
	d2, _ := New(Config{Target: tg, Logger: quietLogger()}, c)
	var resp fasthttp.Response
	if retry, err := d2.Forward(order(1), &resp); err == nil || !retry {
		t.Fatalf("refused connection: retry=%v err=%v", retry, err)
	}
}
