package proxy

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

// fakeDirect is a target with room or not, that answers with status or err.
type fakeDirect struct {
	mu       sync.Mutex
	room     bool
	status   int
	err      error
	retry    bool
	sent     []*buffer.Message
	released int
}

func (f *fakeDirect) TryDirect() (func(), bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.room {
		return nil, false
	}
	return func() { f.mu.Lock(); f.released++; f.mu.Unlock() }, true
}

func (f *fakeDirect) Forward(m *buffer.Message, resp *fasthttp.Response) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cp := *m
	cp.Body = append([]byte(nil), m.Body...)
	f.sent = append(f.sent, &cp)
	if f.err != nil {
		return true, f.err
	}
	resp.SetStatusCode(f.status)
	resp.Header.Set("X-Downstream", "1")
	resp.Header.Set("Connection", "X-Hop")
	resp.Header.Set("X-Hop", "secret")
	resp.SetBodyString(fmt.Sprintf(`{"order":%d}`, len(f.sent)))
	if f.status >= 300 {
		return f.retry, errors.New("status")
	}
	return false, nil
}

func TestSpillover(t *testing.T) {
	addr, s := startPolicy(t, `
routes:
  - name: orders
    match: { path: /api/orders }
    mode: spillover
    idempotency_header: Idempotency-Key
    targets: [{ name: inv, url: "http://127.0.0.1:1" }]
`)
	base := "http://" + addr + "/api/orders"
	q := s.testQueue("orders")

	// Before SetDirect everything is buffered.
	r := do(t, "POST", base, `{"n":0}`, nil)
	if r.StatusCode() != 202 || string(r.Header.Peek(HeaderMode)) != ModeBuffered {
		t.Fatalf("no drainer yet: %d %s", r.StatusCode(), r.Header.Peek(HeaderMode))
	}
	if err := s.SetDirect("nope", &fakeDirect{}); err == nil {
		t.Fatal("SetDirect on an unknown route")
	}
	f := &fakeDirect{room: true, status: 201}
	if err := s.SetDirect("orders", f); err != nil {
		t.Fatal(err)
	}
	// A backlog (the message above, never delivered) keeps requests in order behind it.
	r = do(t, "POST", base, `{"n":1}`, nil)
	if r.StatusCode() != 202 || len(f.sent) != 0 {
		t.Fatalf("with a backlog: %d, %d forwarded", r.StatusCode(), len(f.sent))
	}
	c, err := q.Consumer("inv")
	if err != nil {
		t.Fatal(err)
	}
	drainAll(t, c)

	// Room and no backlog: forwarded, the downstream's own answer; a
	// record of it (no body) is stored as delivered and named by the answer.
	stored := q.Stats().Appended
	r = do(t, "POST", base+"?x=1", `{"n":2}`, map[string]string{"Idempotency-Key": "k-2"})
	if r.StatusCode() != 201 || string(r.Header.Peek(HeaderMode)) != ModeForwarded || string(r.Body()) != `{"order":1}` ||
		string(r.Header.Peek("X-Downstream")) != "1" || len(r.Header.Peek("X-Hop")) != 0 || len(r.Header.Peek("X-Sluice-Id")) == 0 {
		t.Fatalf("forwarded: %d %s %s", r.StatusCode(), r.Header.String(), r.Body())
	}
	fwdID := string(r.Header.Peek("X-Sluice-Id"))
	if m := f.sent[0]; m.IdempotencyKey != "k-2" || m.URI != "/api/orders?x=1" || string(m.Body) != `{"n":2}` || m.Method != "POST" {
		t.Fatalf("forwarded message %+v", m)
	}
	if q.Stats().Appended != stored+1 || f.released != 1 || q.Stats().Targets[0].Pending != 0 {
		t.Fatalf("forwarding stored %d records (want 1, not pending: %+v) or kept its slot (%d released)", q.Stats().Appended-stored, q.Stats().Targets[0], f.released)
	}
	id, _ := buffer.ParseID(fwdID)
	if m, _, err := q.Lookup(id); err != nil || m.IdempotencyKey != "k-2" || len(m.Body) != 0 {
		t.Fatalf("the forwarded record: %+v %v", m, err)
	}
	// A repeat of its key is not forwarded again: the first id, as a duplicate.
	r = do(t, "POST", base+"?x=1", `{"n":2}`, map[string]string{"Idempotency-Key": "k-2"})
	if r.StatusCode() != 202 || string(r.Header.Peek("X-Sluice-Id")) != fwdID || string(r.Header.Peek("X-Sluice-Duplicate")) != "true" || len(f.sent) != 1 {
		t.Fatalf("a repeat of a forwarded key: %d %s, %d forwarded", r.StatusCode(), r.Header.String(), len(f.sent))
	}
	// Another request with its key is refused, as on a buffer route.
	if r = do(t, "POST", base+"?x=1", `{"n":99}`, map[string]string{"Idempotency-Key": "k-2"}); r.StatusCode() != 422 || len(f.sent) != 1 {
		t.Fatalf("another request with a forwarded key: %d, %d forwarded", r.StatusCode(), len(f.sent))
	}
	drainAll(t, c) // passes the forwarded record: delivered (recorded without waiting), never handed out
	var st []buffer.TargetStatus
	for range 200 {
		if _, st, _ = q.Lookup(id); st[0].Phase == buffer.Delivered {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st[0].Phase != buffer.Delivered || st[0].Attempts != 1 {
		t.Fatalf("the forwarded record after the consumer passed it: %+v", st[0])
	}

	// A failure the drainer would not retry is the client's answer; nothing stored.
	f.status, f.retry = 400, false
	if r = do(t, "POST", base, `{"n":3}`, nil); r.StatusCode() != 400 || string(r.Header.Peek(HeaderMode)) != ModeForwarded {
		t.Fatalf("400: %d %s", r.StatusCode(), r.Header.Peek(HeaderMode))
	}
	// A retryable failure (5xx, timeout, no connection) falls back to storing,
	// with the Idempotency-Key the direct attempt carried.
	for i, fail := range []func(){
		func() { f.status, f.retry, f.err = 503, true, nil },
		func() { f.err = errors.New("dial tcp: connection refused") },
	} {
		fail()
		r = do(t, "POST", base, fmt.Sprintf(`{"fail":%d}`, i), nil)
		if r.StatusCode() != 202 || string(r.Header.Peek(HeaderMode)) != ModeBuffered || strings.Contains(string(r.Body()), "order") {
			t.Fatalf("fallback %d: %d %s %s", i, r.StatusCode(), r.Header.Peek(HeaderMode), r.Body())
		}
		id, _ := buffer.ParseID(string(r.Header.Peek("X-Sluice-Id")))
		m, _, err := q.Lookup(id)
		sent := f.sent[len(f.sent)-1]
		if err != nil || string(m.Body) != fmt.Sprintf(`{"fail":%d}`, i) || m.IdempotencyKey == "" || m.IdempotencyKey != sent.IdempotencyKey {
			t.Fatalf("fallback %d stored %+v (%v); direct attempt had key %q", i, m, err, sent.IdempotencyKey)
		}
		drainAll(t, c)
	}
	// No room: stored at once, no attempt.
	f.room, f.err = false, nil
	n := len(f.sent)
	if r = do(t, "POST", base, `{}`, nil); r.StatusCode() != 202 || len(f.sent) != n {
		t.Fatalf("no room: %d, %d attempts", r.StatusCode(), len(f.sent)-n)
	}
	if f.released != len(f.sent) {
		t.Fatalf("%d slots released for %d attempts", f.released, len(f.sent))
	}
}

// drainAll marks everything queued for c delivered.
func drainAll(t *testing.T, c *buffer.Consumer) {
	t.Helper()
	for {
		ds, err := c.Fetch(100, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return
		}
		for _, d := range ds {
			if err := c.Complete(t.Context(), d, buffer.Outcome{Phase: buffer.Delivered}); err != nil {
				t.Fatal(err)
			}
		}
	}
}
