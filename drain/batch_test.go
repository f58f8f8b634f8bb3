package drain

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

func TestNDJSONLine(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{in: `{"a":1}`, want: `{"a":1}`},
		{in: "plain log line", want: "plain log line"},
		{in: "", want: ""},
		{in: "{\n  \"a\": 1,\n  \"b\": \"x y\"\n}\n", want: `{"a":1,"b":"x y"}`},
		{in: "{\"a\":1}\r\n", want: `{"a":1}`},
		{in: "[1,\n2]", want: `[1,2]`},
		{in: "line one\nline two", err: true},
		{in: "{\"a\":1}\n{\"b\":2}\n", err: true}, // two JSON values: two lines, not one
		{in: "text\r", err: true},
	} {
		got, err := ndjsonLine([]byte(tc.in))
		if (err != nil) != tc.err || (err == nil && string(got) != tc.want) {
			t.Errorf("ndjsonLine(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// batchHit is one batch request as the downstream saw it.
func lines(h hit) []string {
	s := strings.TrimSuffix(string(h.body), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func batchTarget(url string, b policies.Batch) policies.Target {
	t := testTarget("logs", url)
	t.Batch = &b
	t.Concurrency = 2
	return t
}

// TestBatch: 1000 messages, 100 a batch: 10 requests, every line arrives once,
// and the rate counts requests, not messages.
func TestBatch(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "logs")
	const n = 1000
	msgs := appendN(t, q, n, order)
	target := batchTarget(ds.url+"/_bulk?pipeline=x", policies.Batch{MaxMessages: 100, MaxBytes: 5 << 20, MaxWait: 200 * ms, Format: policies.FormatNDJSON})
	target.Rate = policies.Rate{PerSecond: 20} // 1000 messages at 20/s would take 50s
	target.Burst = 1
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })

	hits := ds.snapshot()
	seen := map[string]int{}
	for _, h := range hits {
		ls := lines(h)
		if h.method != "POST" || h.uri != "/_bulk?pipeline=x" {
			t.Errorf("batch request %s %s", h.method, h.uri)
		}
		if ct, _ := h.get("Content-Type"); ct != ContentTypeNDJSON {
			t.Errorf("Content-Type %q", ct)
		}
		if size, _ := h.get(HeaderBatchSize); size != strconv.Itoa(len(ls)) {
			t.Errorf("%s: %s, body has %d lines", HeaderBatchSize, size, len(ls))
		}
		if !bytes.HasSuffix(h.body, []byte("\n")) {
			t.Errorf("body does not end with a newline")
		}
		if len(ls) > 100 {
			t.Errorf("batch of %d lines; max_messages is 100", len(ls))
		}
		for _, l := range ls {
			seen[l]++
		}
	}
	if len(hits) < 10 || len(hits) > 14 {
		t.Errorf("%d requests for %d messages in batches of 100; want about 10", len(hits), n)
	}
	for _, m := range msgs {
		if c := seen[string(m.Body)]; c != 1 {
			t.Errorf("%s arrived %d times", m.Body, c)
		}
	}
	if st := d.Stats(); st.Attempts != uint64(len(hits)) || st.Delivered != n {
		t.Errorf("stats %+v with %d requests", st, len(hits))
	}
	st := status(t, q, msgs[0].ID, "logs")
	if st.Phase != buffer.Delivered || st.Attempts != 1 || st.History[0].Status != 200 {
		t.Errorf("status per message: %+v", st.State)
	}
}

// TestBatchRetriedWhole: the first batch fails with 503; the same messages
// come back together in the retry, and each records both attempts.
func TestBatchRetriedWhole(t *testing.T) {
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if h.attempt == 1 {
			ctx.SetStatusCode(503)
		}
	})
	_, q, _ := newQueue(t, "logs")
	const n = 30
	msgs := appendN(t, q, n, order)
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 100, MaxBytes: 1 << 20, MaxWait: 100 * ms})
	target.Concurrency = 1
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })

	hits := ds.snapshot()
	if len(hits) != 2 {
		t.Fatalf("%d requests; want 2 (one failed batch, its retry)", len(hits))
	}
	first, second := lines(hits[0]), lines(hits[1])
	slices.Sort(first)
	slices.Sort(second)
	if len(first) != n || !slices.Equal(first, second) {
		t.Errorf("the retry holds %d lines, the batch %d, not the same", len(second), len(first))
	}
	if a, _ := hits[1].get(HeaderAttempt); a != "2" {
		t.Errorf("retry: %s %q", HeaderAttempt, a)
	}
	for _, m := range msgs {
		st := status(t, q, m.ID, "logs")
		if st.Phase != buffer.Delivered || st.Attempts != 2 || st.History[0].Status != 503 || st.History[1].Status != 200 {
			t.Fatalf("%s: %+v", m.ID, st.State)
		}
	}
}

// TestBatchBodies: a body with a line break is compacted if it is JSON and
// dead if not; max_bytes splits batches.
func TestBatchBodies(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "logs")
	bodies := []string{
		"{\n  \"msg\": \"pretty\"\n}\n",
		"two\nlines",
		strings.Repeat("x", 700),
		strings.Repeat("y", 700),
		`{"msg":"plain"}`,
	}
	msgs := appendN(t, q, len(bodies), func(i int) *buffer.Message {
		return &buffer.Message{Method: "POST", URI: "/logs", Body: []byte(bodies[i])}
	})
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 100, MaxBytes: 1024, MaxWait: 100 * ms})
	target.Concurrency = 1
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every outcome", func() bool { st := d.Stats(); return st.Delivered+st.Dead == 5 })

	var got []string
	for _, h := range ds.snapshot() {
		if len(h.body) > 1024 {
			t.Errorf("a batch of %d bytes; max_bytes is 1024", len(h.body))
		}
		got = append(got, lines(h)...)
	}
	slices.Sort(got)
	want := []string{`{"msg":"plain"}`, `{"msg":"pretty"}`, bodies[2], bodies[3]}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
	st := status(t, q, msgs[1].ID, "logs")
	if st.Phase != buffer.Dead || !strings.Contains(st.History[0].Error, "not JSON") {
		t.Errorf("a non-JSON body with a line break: %+v", st.State)
	}
	if n := ds.count(); n < 2 {
		t.Errorf("%d requests; max_bytes 1024 must split 1400 bytes of x and y", n)
	}
}

// TestBatchWaits: messages that trickle in within max_wait go out together.
func TestBatchWaits(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "logs")
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 100, MaxBytes: 1 << 20, MaxWait: 600 * ms})
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	for i := range 3 {
		appendN(t, q, 1, func(int) *buffer.Message { return order(i) })
		time.Sleep(50 * ms)
	}
	waitFor(t, 5*time.Second, "delivery", func() bool { return d.Stats().Delivered == 3 })
	if hits := ds.snapshot(); len(hits) != 1 || len(lines(hits[0])) != 3 {
		t.Errorf("%d requests; want 1 with 3 lines: %s", len(hits), fmt.Sprint(len(hits)))
	}
}
