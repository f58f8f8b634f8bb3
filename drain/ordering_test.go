package drain

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

const customerHeader = "X-Customer-Id"

// keyed makes message i of key k.
func keyed(k string, i int) *buffer.Message {
	return &buffer.Message{
		Method: "POST", URI: "/api/orders",
		Header: []buffer.Header{{Name: customerHeader, Value: k}},
		Body:   fmt.Appendf(nil, `{"customer":%q,"n":%d}`, k, i),
	}
}

// appendKeyed appends perKey messages for each key, interleaved, one at a
// time (so seq order is the order here), and returns the seqs per key.
func appendKeyed(t *testing.T, q store.Queue, keys []string, perKey int) map[string][]uint64 {
	t.Helper()
	seqs := map[string][]uint64{}
	for i := range perKey {
		for _, k := range keys {
			id, err := q.Append(context.Background(), keyed(k, i))
			if err != nil {
				t.Fatal(err)
			}
			seqs[k] = append(seqs[k], id.Seq())
		}
	}
	return seqs
}

// fetchKeyed appends n (< 10) messages of key k to q, fetches them from c
// (asking for 10, so that one more would show) and returns their seqs and
// deliveries.
func fetchKeyed(t *testing.T, q store.Queue, c Source, k string, n int) ([]uint64, []*store.Delivery) {
	t.Helper()
	var seqs []uint64
	for i := range n {
		id, err := q.Append(context.Background(), keyed(k, i))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, id.Seq())
	}
	got, err := c.Fetch(10, time.Now())
	if err != nil || len(got) != n {
		t.Fatalf("fetched %d: %v", len(got), err)
	}
	return seqs, got
}

func orderedTarget(url string) policies.Target {
	tg := testTarget("a", url)
	tg.Retry.MaxAttempts = 1000
	tg.Ordering = &policies.Ordering{Key: policies.KeySource{Header: customerHeader}}
	return tg
}

func hitSeq(t *testing.T, h *hit) uint64 {
	id, err := buffer.ParseID(h.id)
	if err != nil {
		t.Fatalf("bad id %q: %v", h.id, err)
	}
	return id.Seq()
}

// checkOrder checks that, per key, every request the downstream got was for
// the oldest message of the key not yet delivered (2xx), and that every
// message was delivered exactly once. It returns when each key's last
// message was delivered.
func checkOrder(t *testing.T, hits []hit, want map[string][]uint64) map[string]time.Time {
	t.Helper()
	next := map[string]int{}
	done := map[string]time.Time{}
	for _, h := range hits {
		k, _ := h.get(customerHeader)
		seqs := want[k]
		seq := hitSeq(t, &h)
		i := next[k]
		if i >= len(seqs) {
			t.Errorf("key %q: seq %d arrived after all its messages were delivered", k, seq)
			continue
		}
		if seq != seqs[i] {
			t.Errorf("key %q: seq %d arrived while seq %d (#%d) was not yet delivered", k, seq, seqs[i], i)
			continue
		}
		if h.status >= 200 && h.status <= 299 {
			next[k]++
			done[k] = h.at
		}
	}
	for k, seqs := range want {
		if next[k] != len(seqs) {
			t.Errorf("key %q: %d of %d delivered in order", k, next[k], len(seqs))
		}
	}
	return done
}

// poison answers 503 to the first message of key until the time held in
// until (unix ns) has passed.
func poison(key string, first func() uint64, until *atomic.Int64) func(h *hit, ctx *fasthttp.RequestCtx) {
	return func(h *hit, ctx *fasthttp.RequestCtx) {
		if k, _ := h.get(customerHeader); k == key {
			if id, err := buffer.ParseID(h.id); err == nil && id.Seq() == first() && time.Now().UnixNano() < until.Load() {
				ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
				return
			}
		}
		time.Sleep(time.Millisecond) // a little work, so requests overlap
	}
}

// TestOrderingPerKey: 3 keys x 50 messages at concurrency 8, key "p"'s first
// message refused until keys "a" and "b" are all delivered. Per key, the
// downstream sees the messages in seq order; p's later messages wait for its
// first; the other keys do not: they are all delivered while p's first is
// still refused (a test of the property itself, not of how fast it goes).
func TestOrderingPerKey(t *testing.T) {
	_, q, _ := newQueue(t, "a")
	r := runPoisonedKey(t, q, consumer(t, q, "a"), 50, 20*time.Second)
	if r.atRelease.Retried == 0 {
		t.Error("the poisoned message was never retried")
	}
	_, maxActive := r.ds.gauge()
	st := r.d.Stats()
	t.Logf("a and b done %v and %v before p's first message was accepted; p done %v after; parked %d, retried %d, max in flight %d",
		r.release.Sub(r.done["a"]), r.release.Sub(r.done["b"]), r.done["p"].Sub(r.release), st.Parked, st.Retried, maxActive)
	if maxActive > 8 {
		t.Errorf("%d requests in flight at once, concurrency is 8", maxActive)
	}
	if r.done["p"].Before(r.release) {
		t.Errorf("key p finished %v before its first message was accepted", r.release.Sub(r.done["p"]))
	}
}

// poisonRun is what runPoisonedKey saw.
type poisonRun struct {
	d         *Drainer
	ds        *downstream
	atRelease Stats                // the drainer's stats when p's first message began to be accepted
	release   time.Time            // when it began to be
	done      map[string]time.Time // when each key's last message arrived
}

// runPoisonedKey appends perKey messages for each of the keys a, b and p to
// q and drains them from c to a downstream that refuses p's first message
// until a and b are all delivered. It fails the test if any of p's messages
// is delivered before that, if the rest are not all delivered within wait
// of the release, or if a key's messages arrive out of order.
func runPoisonedKey(t *testing.T, q store.Queue, c Source, perKey int, wait time.Duration) poisonRun {
	t.Helper()
	var first atomic.Uint64
	var until atomic.Int64
	until.Store(time.Now().Add(time.Hour).UnixNano())
	ds := newDownstream(t, poison("p", first.Load, &until))
	want := appendKeyed(t, q, []string{"a", "b", "p"}, perKey)
	first.Store(want["p"][0])

	d, stop := startDrainer(t, Config{Target: orderedTarget(ds.url)}, c)
	delivered := func(key string) int {
		n := 0
		for _, h := range ds.snapshot() {
			if k, _ := h.get(customerHeader); k == key && h.status >= 200 && h.status <= 299 {
				n++
			}
		}
		return n
	}
	waitFor(t, wait, "keys a and b delivered while key p's first message is refused", func() bool {
		return delivered("a") == perKey && delivered("b") == perKey
	})
	if n := delivered("p"); n != 0 {
		t.Fatalf("key p: %d messages delivered while its first was refused", n)
	}
	r := poisonRun{d: d, ds: ds, atRelease: d.Stats(), release: time.Now()}
	until.Store(r.release.UnixNano())
	waitFor(t, wait, "all delivered", func() bool { return d.Stats().Delivered == uint64(3*perKey) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r.done = checkOrder(t, ds.snapshot(), want)
	return r
}

// TestOrderingRestart: Run is stopped while key p's first message is
// failing and other keys are midway; a new drainer on the reopened store
// keeps per-key order and delivers everything exactly once.
func TestOrderingRestart(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, buffer.SyncAlways)
	q := buftest.Queue(t, st, "orders", "a")
	keys := []string{"a", "b", "p"}
	var first atomic.Uint64
	var until atomic.Int64
	until.Store(time.Now().Add(time.Hour).UnixNano())
	ds := newDownstream(t, poison("p", first.Load, &until))
	want := appendKeyed(t, q, keys, 50)
	first.Store(want["p"][0])
	until.Store(time.Now().Add(1500 * ms).UnixNano())

	tg := orderedTarget(ds.url)
	tg.Retry.Initial, tg.Retry.Max = 100*ms, 200*ms // p waits in the retry schedule at the stop
	d1, stop1 := startDrainer(t, Config{Target: tg}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "some deliveries", func() bool { return d1.Stats().Delivered >= 20 })
	if err := stop1(); err != nil {
		t.Fatal(err)
	}
	first1 := d1.Stats().Delivered
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, dir, buffer.SyncAlways)
	q = buftest.Queue(t, st, "orders", "a")
	d2, stop2 := startDrainer(t, Config{Target: tg}, consumer(t, q, "a"))
	waitFor(t, 20*time.Second, "the rest delivered", func() bool { return first1+d2.Stats().Delivered == 150 })
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	t.Logf("delivered %d before the restart, %d after; parked %d+%d", first1, d2.Stats().Delivered, d1.Stats().Parked, d2.Stats().Parked)
	checkOrder(t, ds.snapshot(), want)
}

// TestOrderingAfterCrash builds the states a crash can leave behind with
// the consumer itself, then starts a drainer on the reopened store.
func TestOrderingAfterCrash(t *testing.T) {
	tests := []struct {
		name string
		// prepare gets the three fetched messages of key "k" and leaves them
		// as a crash would; want is the order (indexes) they must arrive in.
		prepare func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery)
		want    []int
	}{
		{
			// The owner was delivered; the crash came before its successor
			// was unparked: nothing else of the key ever arrives.
			name: "orphaned parked messages",
			prepare: func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery) {
				complete(t, c, ds[0], buffer.Outcome{Phase: buffer.Delivered, Attempt: buffer.Attempt{At: time.Now(), Status: 200}})
				park(t, c, ds[1], "k")
				park(t, c, ds[2], "k")
			},
			want: []int{1, 2},
		},
		{
			// The owner waits in the retry schedule; one message is parked
			// behind it, a newer one was in flight (never recorded).
			name: "owner in the retry schedule",
			prepare: func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery) {
				complete(t, c, ds[0], buffer.Outcome{Phase: buffer.Retrying, NextTry: time.Now().Add(300 * ms),
					Attempt: buffer.Attempt{At: time.Now(), Status: 503}})
				park(t, c, ds[1], "k")
				c.Release(ds[2])
			},
			want: []int{0, 1, 2},
		},
		{
			// Two retries of one key (ordering was off when they failed),
			// the newer due well after the older is delivered: it still
			// goes before the parked one.
			name: "two retries of one key",
			prepare: func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery) {
				complete(t, c, ds[0], buffer.Outcome{Phase: buffer.Retrying, NextTry: time.Now(),
					Attempt: buffer.Attempt{At: time.Now(), Status: 503}})
				complete(t, c, ds[1], buffer.Outcome{Phase: buffer.Retrying, NextTry: time.Now().Add(300 * ms),
					Attempt: buffer.Attempt{At: time.Now(), Status: 503}})
				park(t, c, ds[2], "k")
			},
			want: []int{0, 1, 2},
		},
		{
			// An older message was in flight (never recorded) while a newer
			// one failed: the retry cannot own the key before the older one
			// has been fetched again.
			name: "older in flight behind a retry",
			prepare: func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery) {
				complete(t, c, ds[1], buffer.Outcome{Phase: buffer.Retrying, NextTry: time.Now(),
					Attempt: buffer.Attempt{At: time.Now(), Status: 503}})
				park(t, c, ds[2], "k")
				c.Release(ds[0])
			},
			want: []int{0, 1, 2},
		},
		{
			// A newer message failed while an older one was parked.
			name: "older parked behind a retry",
			prepare: func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery) {
				park(t, c, ds[0], "k")
				complete(t, c, ds[1], buffer.Outcome{Phase: buffer.Retrying, NextTry: time.Now(),
					Attempt: buffer.Attempt{At: time.Now(), Status: 503}})
				park(t, c, ds[2], "k")
			},
			want: []int{0, 1, 2},
		},
		{
			// The oldest was in flight; the next is parked behind it.
			name: "owner in flight",
			prepare: func(t *testing.T, c *buffer.Consumer, ds []*buffer.Delivery) {
				park(t, c, ds[1], "k")
				park(t, c, ds[2], "k")
			},
			want: []int{0, 1, 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			st := openStore(t, dir, buffer.SyncAlways)
			q := buftest.Queue(t, st, "orders", "a")
			c := consumer(t, q, "a")
			seqs, got := fetchKeyed(t, q, c, "k", 3)
			tt.prepare(t, c, got)
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}

			ds := newDownstream(t, nil)
			st = openStore(t, dir, buffer.SyncAlways)
			q = buftest.Queue(t, st, "orders", "a")
			d, stop := startDrainer(t, Config{Target: orderedTarget(ds.url)}, consumer(t, q, "a"))
			waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == uint64(len(tt.want)) })
			stop()
			var arrived []uint64
			for _, h := range ds.snapshot() {
				arrived = append(arrived, hitSeq(t, &h))
			}
			var want []uint64
			for _, i := range tt.want {
				want = append(want, seqs[i])
			}
			if fmt.Sprint(arrived) != fmt.Sprint(want) {
				t.Errorf("arrived %v, want %v", arrived, want)
			}
		})
	}
}

// TestOrderingRestartOwnerInRetrySchedule: after a restart, a key whose
// owner waits in the retry schedule keeps waiting for it, and the other
// keys are not held back until that retry is due: the owner is found in the
// schedule at start.
func TestOrderingRestartOwnerInRetrySchedule(t *testing.T) {
	dir := t.TempDir()
	ownerInRetrySchedule(t, func() (store.Queue, parkingSource, func() error) {
		st := openStore(t, dir, buffer.SyncAlways)
		q := buftest.Queue(t, st, "orders", "a")
		return q, consumer(t, q, "a"), st.Close
	}, 10*time.Second)
}

// parkingSource is a Source that parks, as both engines' consumers do.
type parkingSource interface {
	Source
	Park(ctx context.Context, d *store.Delivery, key [16]byte) error
}

// ownerInRetrySchedule is TestOrderingRestartOwnerInRetrySchedule on any
// engine: open opens the engine's store (in the same place each time) and
// returns the queue "orders" of target "a", its consumer and the store's
// Close. Key p's first message fails and is due in 1.5 s, its other two
// are parked behind it; after a restart, keys a and p get 5 more each. Key
// a finishes before the retry is due, key p after, all within wait.
func ownerInRetrySchedule(t *testing.T, open func() (store.Queue, parkingSource, func() error), wait time.Duration) {
	t.Helper()
	q, c, closeStore := open()
	pSeqs, got := fetchKeyed(t, q, c, "p", 3)
	// p's first message failed and is due in 1.5s; the others wait behind it.
	retryAt := time.Now().Add(1500 * ms)
	if err := c.Complete(context.Background(), got[0], store.Outcome{Phase: store.Retrying, NextTry: retryAt,
		Attempt: store.Attempt{At: time.Now(), Status: 503}}); err != nil {
		t.Fatal(err)
	}
	for _, d := range got[1:] {
		if err := c.Park(context.Background(), d, store.KeyHash([]byte("p"))); err != nil {
			t.Fatal(err)
		}
	}
	if err := closeStore(); err != nil {
		t.Fatal(err)
	}

	q, c, closeStore = open()
	t.Cleanup(func() { closeStore() })
	want := appendKeyed(t, q, []string{"a", "p"}, 5)
	want["p"] = append(pSeqs, want["p"]...)
	ds := newDownstream(t, nil)
	d, stop := startDrainer(t, Config{Target: orderedTarget(ds.url)}, c)
	waitFor(t, wait, "every message delivered", func() bool { return d.Stats().Delivered == 13 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	done := checkOrder(t, ds.snapshot(), want)
	if !done["a"].Before(retryAt) {
		t.Errorf("key a finished at %v, after p's retry was due (%v): held back by it",
			done["a"].Format("15:04:05.000"), retryAt.Format("15:04:05.000"))
	}
	if done["p"].Before(retryAt) {
		t.Errorf("key p finished before its first message's retry was due")
	}
}

func complete(t *testing.T, c *buffer.Consumer, d *buffer.Delivery, out buffer.Outcome) {
	t.Helper()
	if err := c.Complete(context.Background(), d, out); err != nil {
		t.Fatal(err)
	}
}

func park(t *testing.T, c *buffer.Consumer, d *buffer.Delivery, key string) {
	t.Helper()
	if err := c.Park(context.Background(), d, buffer.KeyHash([]byte(key))); err != nil {
		t.Fatal(err)
	}
}

// TestOrderingUnkeyed: messages without the key header are not ordered and
// not parked.
func TestOrderingUnkeyed(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "a")
	appendN(t, q, 40, order)
	d, stop := startDrainer(t, Config{Target: orderedTarget(ds.url)}, consumer(t, q, "a"))
	waitFor(t, 10*time.Second, "deliveries", func() bool { return d.Stats().Delivered == 40 })
	stop()
	if p := d.Stats().Parked; p != 0 {
		t.Errorf("%d unkeyed messages parked", p)
	}
}

// failingComplete is a Source and Parker whose Complete fails, as a failed
// write would (nothing is committed; the message stays in flight in the
// consumer), while fail returns true for the delivery.
type failingComplete struct {
	*buffer.Consumer
	fail func(dl *buffer.Delivery) bool
	err  error // what a failure returns; nil: an error that is not retried
}

// CompleteBatch goes through Complete, so that batches fail as it says.
func (f *failingComplete) CompleteBatch(ctx context.Context, ds []*buffer.Delivery, outs []buffer.Outcome) []error {
	errs := make([]error, len(ds))
	for i, dl := range ds {
		errs[i] = f.Complete(ctx, dl, outs[i])
	}
	return errs
}

func (f *failingComplete) Complete(ctx context.Context, dl *buffer.Delivery, out buffer.Outcome) error {
	if f.fail(dl) {
		if f.err != nil {
			return f.err
		}
		return fmt.Errorf("injected: cannot record the outcome of seq %d", dl.Seq)
	}
	return f.Consumer.Complete(ctx, dl, out)
}

// TestOrderingUnrecordedOwnerAcrossRuns: the owner of key k is attempted
// and its outcome cannot be recorded; Run ends and a new Run of the same
// drainer (same consumer, same process) starts. The key's later messages
// must not go out before the owner.
func TestOrderingUnrecordedOwnerAcrossRuns(t *testing.T) {
	for _, tt := range []struct {
		name string
		// failAttempt is the attempt of k's first message whose outcome
		// cannot be recorded; the ones before it are answered 503.
		failAttempt int
	}{
		{"first attempt", 1},
		{"a retry", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, q, _ := newQueue(t, "a")
			want := appendKeyed(t, q, []string{"k"}, 3)
			first := want["k"][0]
			var failing atomic.Bool
			failing.Store(true)
			ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
				if id, err := buffer.ParseID(h.id); err == nil && id.Seq() == first && failing.Load() {
					ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
				}
			})
			var failed atomic.Bool // once: the write fails, then works again
			src := &failingComplete{Consumer: consumer(t, q, "a"), fail: func(dl *buffer.Delivery) bool {
				return dl.Seq == first && dl.Attempt == tt.failAttempt && failed.CompareAndSwap(false, true)
			}}
			tg := orderedTarget(ds.url)
			tg.Retry.Initial, tg.Retry.Max = 10*ms, 10*ms
			d, err := New(Config{Route: "orders", Target: tg, Logger: quietLogger()}, src)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, d)
			waitFor(t, 10*time.Second, "the unrecorded outcome", func() bool { return d.Stats().Unrecorded == 1 })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if n := ds.count(); n != tt.failAttempt {
				t.Fatalf("%d requests before the second Run, want %d", n, tt.failAttempt)
			}

			failing.Store(false)
			stop = run(t, d)
			// Whatever happens, k's later messages must not overtake the
			// first: wait until all three arrived or a bounded time passed.
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) && d.Stats().Delivered < 3 {
				time.Sleep(5 * ms)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			checkOrder(t, ds.snapshot(), want)
		})
	}
}
