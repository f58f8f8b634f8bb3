// Package storetest is the conformance suite of the store contract: every
// storage engine runs it from its own tests (buffer: conformance_test.go)
// and must pass all of it. It checks the behaviour proxy and drain rely on:
// appends and lookups, fan-out, the retry schedule, dead letters, parking,
// idempotency keys, Release, and that a restart keeps every outcome and
// every pending message, and (optional) the listing and counts of every
// message by phase with their identity. It knows nothing of any engine: an Engine opens
// one in a directory. Crashes are engine-specific (a killed process) and
// are tested by each engine beside the suite.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// Engine opens a queue named "orders" with the given targets in dir,
// reopening what an earlier Open left there.
type Engine struct {
	Open func(t *testing.T, dir string, targets []string) Opened
}

// Opened is an open queue and its consumers.
type Opened struct {
	Queue    store.Queue
	Consumer func(target string) store.Consumer
	Close    func() error
}

// Run runs the whole suite against e.
func Run(t *testing.T, e Engine) { RunOnly(t, e) }

// RunOnly runs the named cases of the suite against e (none named: all),
// for an engine that runs some of them again in another configuration.
func RunOnly(t *testing.T, e Engine, names ...string) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, Engine)
	}{
		{"AppendLookup", testAppendLookup},
		{"FanOutIndependent", testFanOut},
		{"RetrySchedule", testRetry},
		{"Dead", testDead},
		{"Release", testRelease},
		{"Idempotency", testIdempotency},
		{"KeyMismatch", testKeyMismatch},
		{"Restart", testRestart},
		{"Park", testPark},
		{"BatchAppend", testBatchAppend},
		{"ListAndCount", testList},
		{"ListPages", testListPages},
		{"PurgedPhase", testPurged},
		{"Replay", testReplay},
		{"Forwarded", testForwarded},
	} {
		if len(names) > 0 && !slices.Contains(names, tc.name) {
			continue
		}
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, e) })
	}
}

var ctx = context.Background()

func open(t *testing.T, e Engine, dir string, targets ...string) Opened {
	t.Helper()
	o := e.Open(t, dir, targets)
	t.Cleanup(func() { o.Close() })
	return o
}

func appendN(t *testing.T, q store.Queue, n int) []store.ID {
	t.Helper()
	ids := make([]store.ID, n)
	for i := range n {
		id, err := q.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i), Body: []byte(fmt.Sprintf(`{"n":%d}`, i))})
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		ids[i] = id
	}
	return ids
}

// fetchAll fetches until Fetch returns nothing (bounded).
func fetchAll(t *testing.T, c store.Consumer, now time.Time) []*store.Delivery {
	t.Helper()
	var out []*store.Delivery
	for range 1000 {
		ds, err := c.Fetch(64, now)
		if err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if len(ds) == 0 {
			return out
		}
		out = append(out, ds...)
	}
	t.Fatal("fetch never ran dry")
	return nil
}

func complete(t *testing.T, c store.Consumer, ds []*store.Delivery, out store.Outcome) {
	t.Helper()
	for _, d := range ds {
		if err := c.Complete(ctx, d, out); err != nil {
			t.Fatalf("complete %d: %v", d.Seq, err)
		}
	}
}

func delivered(now time.Time) store.Outcome {
	return store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: now, Status: 200}}
}

func phase(t *testing.T, q store.Queue, id store.ID, target int) store.Phase {
	t.Helper()
	_, st, err := q.Lookup(id)
	if err != nil {
		t.Fatalf("lookup %s: %v", id, err)
	}
	return st[target].Phase
}

func testAppendLookup(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	ids := appendN(t, o.Queue, 5)
	for i, id := range ids {
		m, st, err := o.Queue.Lookup(id)
		if err != nil || m.URI != fmt.Sprintf("/o/%d", i) || string(m.Body) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("lookup %d: %v %+v", i, err, m)
		}
		if len(st) != 1 || st[0].Target != "a" || st[0].Phase != store.Queued {
			t.Fatalf("status of a new message: %+v", st)
		}
		if i > 0 && id.Seq() <= ids[i-1].Seq() {
			t.Fatalf("seqs do not grow: %d after %d", id.Seq(), ids[i-1].Seq())
		}
	}
	guess := store.NewID(ids[0].Seq(), [8]byte{1})
	if _, _, err := o.Queue.Lookup(guess); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a guessed id: %v, want ErrNotFound", err)
	}
	if got := o.Queue.Stats().Appended; got != ids[4].Seq() {
		t.Fatalf("Stats().Appended = %d, want %d", got, ids[4].Seq())
	}
}

func testFanOut(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a", "b")
	ids := appendN(t, o.Queue, 10)
	now := time.Now()
	a := fetchAll(t, o.Consumer("a"), now)
	if len(a) != 10 {
		t.Fatalf("a fetched %d of 10", len(a))
	}
	complete(t, o.Consumer("a"), a, delivered(now))
	b := fetchAll(t, o.Consumer("b"), now)
	if len(b) != 10 {
		t.Fatalf("b fetched %d of 10 after a finished", len(b))
	}
	if p := phase(t, o.Queue, ids[3], 0); p != store.Delivered {
		t.Fatalf("a's phase %s", p)
	}
	if p := phase(t, o.Queue, ids[3], 1); p != store.InFlight {
		t.Fatalf("b's phase %s, want in flight", p)
	}
	if again := fetchAll(t, o.Consumer("a"), now); len(again) != 0 {
		t.Fatalf("a fetched %d again after delivering", len(again))
	}
}

func testRetry(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	ids := appendN(t, o.Queue, 1)
	c := o.Consumer("a")
	now := time.Now()
	ds := fetchAll(t, c, now)
	due := now.Add(time.Hour)
	complete(t, c, ds, store.Outcome{Phase: store.Retrying, NextTry: due, Attempt: store.Attempt{At: now, Status: 503}})
	if p := phase(t, o.Queue, ids[0], 0); p != store.Retrying {
		t.Fatalf("phase %s, want retrying", p)
	}
	if at, ok := c.NextRetry(); !ok || !at.Equal(due) {
		t.Fatalf("NextRetry = %v %v, want %v", at, ok, due)
	}
	if early := fetchAll(t, c, now); len(early) != 0 {
		t.Fatalf("%d fetched before the retry is due", len(early))
	}
	late := fetchAll(t, c, due.Add(time.Second))
	if len(late) != 1 || late[0].Attempt != 2 || late[0].Prior == nil || late[0].Prior.Phase != store.Retrying {
		t.Fatalf("the due retry: %+v", late)
	}
	complete(t, c, late, delivered(due))
	_, st, _ := o.Queue.Lookup(ids[0])
	if st[0].Phase != store.Delivered || st[0].Attempts != 2 || len(st[0].History) != 2 {
		t.Fatalf("after the retry: %+v", st[0])
	}
	if _, ok := c.NextRetry(); ok {
		t.Fatal("a retry is left in the schedule after delivery")
	}
}

func testDead(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	ids := appendN(t, o.Queue, 3)
	c := o.Consumer("a")
	now := time.Now()
	ds := fetchAll(t, c, now)
	complete(t, c, ds[:1], store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Status: 400, Error: "status 400"}})
	complete(t, c, ds[1:], delivered(now))
	if p := phase(t, o.Queue, ids[0], 0); p != store.Dead {
		t.Fatalf("phase %s, want dead", p)
	}
	dl, ok := o.Queue.(store.DeadLetters)
	if !ok {
		return
	}
	list, err := dl.DeadLetters("a", 0, 10)
	if err != nil || len(list) != 1 || list[0].Message.Seq != ids[0].Seq() || list[0].State.Phase != store.Dead {
		t.Fatalf("dead letters: %v %+v", err, list)
	}
	if err := dl.Revive(ctx, "a", ids[0].Seq(), now); err != nil {
		t.Fatal(err)
	}
	again := fetchAll(t, c, now.Add(time.Second))
	if len(again) != 1 || again[0].Seq != ids[0].Seq() {
		t.Fatalf("the revived letter: %+v", again)
	}
	complete(t, c, again, delivered(now))
	if list, _ := dl.DeadLetters("a", 0, 10); len(list) != 0 {
		t.Fatalf("%d dead letters after revival and delivery", len(list))
	}
}

func testRelease(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	appendN(t, o.Queue, 4)
	c := o.Consumer("a")
	now := time.Now()
	ds := fetchAll(t, c, now)
	complete(t, c, ds[1:2], delivered(now))
	c.Release(ds[0])
	c.Release(ds[2])
	again := fetchAll(t, c, now)
	if len(again) != 2 || again[0].Seq != ds[0].Seq || again[1].Seq != ds[2].Seq {
		seqs := []uint64{}
		for _, d := range again {
			seqs = append(seqs, d.Seq)
		}
		t.Fatalf("after Release: fetched %v, want %d and %d", seqs, ds[0].Seq, ds[2].Seq)
	}
}

func testIdempotency(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	d := &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("k-1"), Body: []byte("1")}
	first, err := o.Queue.AppendDraft(ctx, d)
	if err != nil || d.Duplicate {
		t.Fatalf("first: %v dup=%v", err, d.Duplicate)
	}
	d.Reset()
	d.Method, d.URI, d.IdempotencyKey, d.Body = []byte("POST"), []byte("/o"), []byte("k-1"), []byte("1")
	d.AddHeader([]byte("X-Retry"), []byte("2")) // headers are not part of the request's fingerprint
	again, err := o.Queue.AppendDraft(ctx, d)
	if err != nil || !d.Duplicate || again != first {
		t.Fatalf("repeat: %v dup=%v id %s, want %s", err, d.Duplicate, again, first)
	}
	if n := len(fetchAll(t, o.Consumer("a"), time.Now())); n != 1 {
		t.Fatalf("%d messages stored for one key", n)
	}
}

// testKeyMismatch: a key seen before with another request (method, URI or
// body) is refused with ErrKeyMismatch and stores nothing, in a single
// append and in a batch, before and after a restart; the same request still
// answers the first id.
func testKeyMismatch(t *testing.T, e Engine) {
	dir := t.TempDir()
	o := e.Open(t, dir, []string{"a"})
	req := func(method, uri, body string) *store.Draft {
		return &store.Draft{Method: []byte(method), URI: []byte(uri), IdempotencyKey: []byte("k-1"), Body: []byte(body)}
	}
	first, err := o.Queue.AppendDraft(ctx, req("POST", "/o", `{"qty":1}`))
	if err != nil {
		t.Fatal(err)
	}
	check := func(o Opened, when string) {
		t.Helper()
		for _, d := range []*store.Draft{req("POST", "/o", `{"qty":2}`), req("PUT", "/o", `{"qty":1}`), req("POST", "/o?x=1", `{"qty":1}`), req("POST", "/o", "")} {
			id, err := o.Queue.AppendDraft(ctx, d)
			if !errors.Is(err, store.ErrKeyMismatch) || d.Duplicate {
				t.Fatalf("%s: %s %s with body %q: id %s dup=%v err %v, want ErrKeyMismatch", when, d.Method, d.URI, d.Body, id, d.Duplicate, err)
			}
		}
		d := req("POST", "/o", `{"qty":1}`)
		if id, err := o.Queue.AppendDraft(ctx, d); err != nil || !d.Duplicate || id != first {
			t.Fatalf("%s: the same request: id %s dup=%v err %v, want %s", when, id, d.Duplicate, err, first)
		}
		if ba, ok := o.Queue.(store.BatchAppender); ok {
			ds := []*store.Draft{req("POST", "/o", `{"qty":3}`), {Method: []byte("POST"), URI: []byte("/other"), Body: []byte("x")}}
			_, errs := ba.AppendDrafts(ctx, ds)
			if !errors.Is(errs[0], store.ErrKeyMismatch) || errs[1] != nil {
				t.Fatalf("%s: batch: errs %v, want ErrKeyMismatch and nil", when, errs)
			}
		}
	}
	check(o, "before restart")
	want := o.Queue.Appended()
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = open(t, e, dir, "a")
	check(o, "after restart")
	if _, ok := o.Queue.(store.BatchAppender); ok {
		want++ // the batch's keyless draft, once more
	}
	if got := o.Queue.Appended(); got != want {
		t.Fatalf("appended up to seq %d, want %d: a refused request was stored", got, want)
	}
	m, _, err := o.Queue.Lookup(first)
	if err != nil || m.Method != "POST" || m.URI != "/o" || string(m.Body) != `{"qty":1}` {
		t.Fatalf("the first message: %+v %v", m, err)
	}
}

// testRestart: outcomes and pending messages survive a close and reopen;
// nothing delivered is handed out again, nothing pending is lost.
func testRestart(t *testing.T, e Engine) {
	dir := t.TempDir()
	o := e.Open(t, dir, []string{"a"})
	ids := appendN(t, o.Queue, 20)
	c := o.Consumer("a")
	now := time.Now()
	ds := fetchAll(t, c, now)
	complete(t, c, ds[:10], delivered(now))
	complete(t, c, ds[10:11], store.Outcome{Phase: store.Retrying, NextTry: now.Add(time.Minute), Attempt: store.Attempt{At: now, Status: 503}})
	complete(t, c, ds[11:12], store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Status: 400}})
	for _, d := range ds[12:] {
		c.Release(d)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = open(t, e, dir, "a")
	for i, want := range map[int]store.Phase{0: store.Delivered, 9: store.Delivered, 10: store.Retrying, 11: store.Dead, 12: store.Queued} {
		if p := phase(t, o.Queue, ids[i], 0); p != want {
			t.Fatalf("message %d after a restart: %s, want %s", i, p, want)
		}
	}
	got := fetchAll(t, o.Consumer("a"), now)
	if len(got) != 8 || got[0].Seq != ids[12].Seq() {
		t.Fatalf("after a restart fetched %d messages (first %v), want the 8 released", len(got), got)
	}
	retry := fetchAll(t, o.Consumer("a"), now.Add(2*time.Minute))
	if len(retry) != 1 || retry[0].Seq != ids[10].Seq() {
		t.Fatalf("the retry after a restart: %+v", retry)
	}
}

func testPark(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	c := o.Consumer("a")
	p, ok := c.(store.Parker)
	if !ok {
		t.Skip("the engine's consumers do not park (optional)")
	}
	appendN(t, o.Queue, 3)
	now := time.Now()
	ds := fetchAll(t, c, now)
	key := store.KeyHash([]byte("customer-1"))
	for _, d := range ds[1:] {
		if err := p.Park(ctx, d, key); err != nil {
			t.Fatal(err)
		}
	}
	if seq, ok, err := p.NextParked(key); err != nil || !ok || seq != ds[1].Seq {
		t.Fatalf("NextParked = %d %v %v", seq, ok, err)
	}
	if got := fetchAll(t, c, now.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("%d parked messages fetched", len(got))
	}
	seqs, all, err := p.UnparkN(ctx, key, 10, now)
	if err != nil || !all || len(seqs) != 2 {
		t.Fatalf("UnparkN = %v %v %v", seqs, all, err)
	}
	if got := fetchAll(t, c, now.Add(time.Second)); len(got) != 2 {
		t.Fatalf("%d unparked messages fetched, want 2", len(got))
	}
}

func testBatchAppend(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	ba, ok := o.Queue.(store.BatchAppender)
	if !ok {
		t.Skip("the engine's queues do not append in batches (optional)")
	}
	first, err := o.Queue.AppendDraft(ctx, &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("seen"), Body: []byte("0")})
	if err != nil {
		t.Fatal(err)
	}
	ds := make([]*store.Draft, 50)
	for i := range ds {
		ds[i] = &store.Draft{Method: []byte("POST"), URI: []byte(fmt.Sprintf("/o/%d", i)), Body: []byte(fmt.Sprint(i))}
	}
	ds[7] = &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("seen"), Body: []byte("0")}
	ids, errs := ba.AppendDrafts(ctx, ds)
	for i := range ds {
		if errs[i] != nil {
			t.Fatalf("draft %d: %v", i, errs[i])
		}
	}
	if !ds[7].Duplicate || ids[7] != first {
		t.Fatalf("a key stored before: dup=%v id %s, want %s", ds[7].Duplicate, ids[7], first)
	}
	for i, id := range ids {
		if i == 7 {
			continue
		}
		m, _, err := o.Queue.Lookup(id)
		if err != nil || m.URI != fmt.Sprintf("/o/%d", i) {
			t.Fatalf("draft %d: %v %+v", i, err, m)
		}
	}
	if n := len(fetchAll(t, o.Consumer("a"), time.Now())); n != 50 {
		t.Fatalf("%d messages stored, want 50 (49 drafts and the first)", n)
	}
}
