package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// listFixture appends six keyed messages one second apart (accepted at
// base+i s) and brings them, for target a, to: 0 and 1 delivered, 2 dead
// (status 400), 3 retrying (status 503, due in an hour), 4 in flight, 5
// queued (fetched and released). Target b has fetched nothing.
func listFixture(t *testing.T, e Engine, dir string) (Opened, store.Lister, []store.ID, time.Time) {
	t.Helper()
	o := open(t, e, dir, "a", "b")
	l, ok := o.Queue.(store.Lister)
	if !ok {
		t.Skip("the engine's queues do not list (optional)")
	}
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	ids := make([]store.ID, 6)
	for i := range ids {
		d := &store.Draft{Method: []byte("POST"), URI: []byte(fmt.Sprintf("/o/%d", i)), IdempotencyKey: []byte(fmt.Sprintf("k%d", i)),
			Body: []byte("x"), EnqueuedAt: base.Add(time.Duration(i) * time.Second)}
		id, err := o.Queue.AppendDraft(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	c := o.Consumer("a")
	now := time.Now()
	ds := fetchAll(t, c, now)
	if len(ds) != 6 {
		t.Fatalf("fetched %d, want 6", len(ds))
	}
	complete(t, c, ds[:2], delivered(now))
	complete(t, c, ds[2:3], store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Status: 400, Error: "status 400"}})
	complete(t, c, ds[3:4], store.Outcome{Phase: store.Retrying, NextTry: now.Add(time.Hour), Attempt: store.Attempt{At: now, Status: 503}})
	c.Release(ds[5])
	return o, l, ids, base
}

// list collects the ids of every message matching f, a page of limit at a time.
func list(t *testing.T, l store.Lister, f store.Filter, limit int) ([]store.ID, []store.Row) {
	t.Helper()
	var ids []store.ID
	var rows []store.Row
	var after uint64
	for range 100000 {
		last, end, err := l.Messages(f, after, limit, func(r *store.Row) bool {
			ids = append(ids, r.ID)
			rows = append(rows, *r)
			return true
		})
		if err != nil {
			t.Fatalf("Messages(%+v): %v", f, err)
		}
		if end {
			return ids, rows
		}
		if last <= after {
			t.Fatalf("Messages(%+v) made no progress after %d", f, after)
		}
		after = last
	}
	t.Fatal("Messages never ended")
	return nil, nil
}

func testList(t *testing.T, e Engine) {
	dir := t.TempDir()
	o, l, ids, base := listFixture(t, e, dir)
	all, rows := list(t, l, store.Filter{}, 100)
	if !slices.Equal(all, ids) {
		t.Fatalf("every message: %v, want %v", all, ids)
	}
	wantA := []store.Phase{store.Delivered, store.Delivered, store.Dead, store.Retrying, store.InFlight, store.Queued}
	for i, r := range rows {
		if r.Key != fmt.Sprintf("k%d", i) || !r.AcceptedAt.Equal(base.Add(time.Duration(i)*time.Second)) || len(r.Targets) != 2 {
			t.Fatalf("row %d: %+v", i, r)
		}
		if r.Targets[0].Target != "a" || r.Targets[0].Phase != wantA[i] || r.Targets[1].Target != "b" || r.Targets[1].Phase != store.Queued {
			t.Fatalf("row %d's targets: %+v, want a %s and b queued", i, r.Targets, wantA[i])
		}
	}
	if rt := rows[2].Targets[0]; rt.Status != 400 || rt.Attempts != 1 || rt.At.IsZero() || rt.Reason == "" {
		t.Fatalf("the dead row: %+v", rt)
	}
	for _, tc := range []struct {
		f    store.Filter
		want []store.ID
	}{
		{store.Filter{Target: "a", Phase: store.Delivered}, ids[:2]},
		{store.Filter{Target: "a", Phase: store.InFlight}, ids[4:5]},
		{store.Filter{Target: "a", Phase: store.Queued}, ids[5:6]},
		{store.Filter{Target: "b", Phase: store.Queued}, ids},
		{store.Filter{Target: "b", Phase: store.Delivered}, nil},
		{store.Filter{Target: "a", Status: 400}, ids[2:3]},
		{store.Filter{Status: 503}, ids[3:4]},
		{store.Filter{Key: "k3"}, ids[3:4]},
		{store.Filter{Key: "nope"}, nil},
		{store.Filter{Since: base.Add(2 * time.Second), Until: base.Add(4 * time.Second)}, ids[2:4]},
		{store.Filter{Target: "a", Phase: store.Delivered, Since: base.Add(time.Second)}, ids[1:2]},
	} {
		got, rows := list(t, l, tc.f, 100)
		if !slices.Equal(got, tc.want) {
			t.Errorf("Messages(%+v) = %v, want %v", tc.f, got, tc.want)
		}
		if tc.f.Target != "" {
			for _, r := range rows {
				if len(r.Targets) != 1 || r.Targets[0].Target != tc.f.Target {
					t.Errorf("Messages(%+v): a row lists targets %+v", tc.f, r.Targets)
				}
			}
		}
	}
	ca, err := l.Counts("a", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := store.Counts{Target: "a", Accepted: 6, Delivered: 2, Dead: 1, Retrying: 1, InFlight: 1, Queued: 1}
	if ca != want || ca.Check() != nil {
		t.Fatalf("counts of a: %+v, want %+v", ca, want)
	}
	if cb, err := l.Counts("b", time.Time{}, time.Time{}); err != nil || cb != (store.Counts{Target: "b", Accepted: 6, Queued: 6}) {
		t.Fatalf("counts of b: %+v %v", cb, err)
	}
	cw, err := l.Counts("a", base.Add(2*time.Second), base.Add(4*time.Second))
	if err != nil || cw != (store.Counts{Target: "a", Accepted: 2, Dead: 1, Retrying: 1}) {
		t.Fatalf("counts of a in [2s, 4s): %+v %v", cw, err)
	}
	if _, err := l.Counts("zz", time.Time{}, time.Time{}); !errors.Is(err, store.ErrUnknownTarget) {
		t.Fatalf("counts of an unknown target: %v", err)
	}
	if _, _, err := l.Messages(store.Filter{Target: "zz"}, 0, 10, func(*store.Row) bool { return true }); !errors.Is(err, store.ErrUnknownTarget) {
		t.Fatalf("list of an unknown target: %v", err)
	}
	// A restart keeps every phase but in flight (a claim of the process:
	// the message is queued again), and the counts with it.
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = open(t, e, dir, "a", "b")
	l = o.Queue.(store.Lister)
	_, rows = list(t, l, store.Filter{}, 100)
	wantA[4] = store.Queued
	if len(rows) != len(ids) {
		t.Fatalf("after a restart: %d rows, want %d", len(rows), len(ids))
	}
	for i, r := range rows {
		if r.ID != ids[i] || len(r.Targets) != 2 || r.Targets[0].Phase != wantA[i] || r.Targets[1].Phase != store.Queued {
			t.Fatalf("after a restart, row %d: %+v, want a %s and b queued", i, r, wantA[i])
		}
	}
	if ca, err := l.Counts("a", time.Time{}, time.Time{}); err != nil || ca != (store.Counts{Target: "a", Accepted: 6, Delivered: 2, Dead: 1, Retrying: 1, Queued: 2}) {
		t.Fatalf("counts of a after a restart: %+v %v", ca, err)
	}
}

// testListPages: pages of any size list every message once, in order, and
// fn returning false stops the page.
func testListPages(t *testing.T, e Engine) {
	o := open(t, e, t.TempDir(), "a")
	l, ok := o.Queue.(store.Lister)
	if !ok {
		t.Skip("the engine's queues do not list (optional)")
	}
	ids := appendN(t, o.Queue, 1200)
	for _, limit := range []int{1, 7, 512, 513, 5000} {
		got, _ := list(t, l, store.Filter{}, limit)
		if !slices.Equal(got, ids) {
			t.Fatalf("limit %d: %d rows, want %d in order", limit, len(got), len(ids))
		}
	}
	n := 0
	last, end, err := l.Messages(store.Filter{}, 0, 1000, func(*store.Row) bool { n++; return n < 10 })
	if err != nil || end || n != 10 || last != ids[9].Seq() {
		t.Fatalf("stopped by fn: last %d end %v n %d err %v, want last %d", last, end, n, err, ids[9].Seq())
	}
	c, err := l.Counts("a", time.Time{}, time.Time{})
	if err != nil || c.Accepted != 1200 || c.Queued != 1200 || c.Check() != nil {
		t.Fatalf("counts: %+v %v", c, err)
	}
}

// testPurged: a purged dead letter is Purged, not Dead, in Lookup, the list
// and the counts.
func testPurged(t *testing.T, e Engine) {
	o, l, ids, _ := listFixture(t, e, t.TempDir())
	dl, ok := o.Queue.(store.DeadLetters)
	if !ok {
		t.Skip("the engine has no dead letters (optional)")
	}
	if err := dl.Purge(ctx, "a", ids[2].Seq()); err != nil {
		t.Fatal(err)
	}
	if p := phase(t, o.Queue, ids[2], 0); p != store.Purged {
		t.Fatalf("a purged letter's phase: %s", p)
	}
	got, _ := list(t, l, store.Filter{Target: "a", Phase: store.Purged}, 100)
	if !slices.Equal(got, ids[2:3]) {
		t.Fatalf("purged: %v", got)
	}
	c, _ := l.Counts("a", time.Time{}, time.Time{})
	if c.Purged != 1 || c.Dead != 0 || c.Accepted != 6 || c.Check() != nil {
		t.Fatalf("counts after a purge: %+v", c)
	}
}

// testReplay: a delivered and a dead message go back to the retry
// schedule, are fetched again with the attempt after the last, and the
// replay is in the history; other phases (retrying, in flight, queued)
// are ErrNotFound.
func testReplay(t *testing.T, e Engine) {
	o, l, ids, _ := listFixture(t, e, t.TempDir())
	rp, ok := o.Queue.(store.Replayer)
	if !ok {
		t.Skip("the engine's queues do not replay (optional)")
	}
	now := time.Now()
	for _, i := range []int{0, 2} {
		if err := rp.Replay(ctx, "a", ids[i].Seq(), now); err != nil {
			t.Fatalf("replay of message %d: %v", i, err)
		}
	}
	for _, i := range []int{3, 4, 5} {
		if err := rp.Replay(ctx, "a", ids[i].Seq(), now); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("replay of message %d (not delivered or dead): %v", i, err)
		}
	}
	if err := rp.Replay(ctx, "a", ids[0].Seq(), now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a second replay of a message already retrying: %v", err)
	}
	if dl, ok := o.Queue.(store.DeadLetters); ok {
		if list, _ := dl.DeadLetters("a", 0, 10); len(list) != 0 {
			t.Fatalf("%d dead letters after the dead one was replayed", len(list))
		}
	}
	c := o.Consumer("a")
	got := fetchAll(t, c, now.Add(time.Second))
	// Due retries first: the two replayed, then the released one.
	if len(got) != 3 || got[0].Seq != ids[0].Seq() || got[1].Seq != ids[2].Seq() || got[0].Attempt != 2 || got[1].Attempt != 2 || got[2].Seq != ids[5].Seq() {
		t.Fatalf("the replayed messages fetched: %d", len(got))
	}
	c.Release(got[2])
	complete(t, c, got[:2], delivered(now))
	_, st, _ := o.Queue.Lookup(ids[0])
	h := st[0].History
	if st[0].Phase != store.Delivered || len(h) != 3 || h[1].Error == "" || h[2].N != 2 {
		t.Fatalf("history after a replay: %+v", st[0])
	}
	cnt, _ := l.Counts("a", time.Time{}, time.Time{})
	if cnt.Delivered != 3 || cnt.Dead != 0 || cnt.Accepted != 6 || cnt.Check() != nil {
		t.Fatalf("counts after replays: %+v", cnt)
	}
}

// testForwarded: a forwarded request's record is never handed out, shows
// as delivered with its status once a consumer has passed it, keeps its
// key (FindKey, and a repeat is a duplicate), and is not counted as
// pending; all of it across a restart.
func testForwarded(t *testing.T, e Engine) {
	dir := t.TempDir()
	o := e.Open(t, dir, []string{"a"})
	fr, ok := o.Queue.(store.ForwardRecorder)
	if !ok {
		o.Close()
		t.Skip("the engine's queues do not record forwarded requests (optional)")
	}
	if _, found, err := fr.FindKey(ctx, []byte("fw-1")); err != nil || found {
		t.Fatalf("FindKey before: %v %v", found, err)
	}
	d := &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("fw-1"), Body: []byte("dropped")}
	id, err := fr.AppendForwarded(ctx, d, 201)
	if err != nil || d.Duplicate {
		t.Fatalf("AppendForwarded: %v dup=%v", err, d.Duplicate)
	}
	if got, found, err := fr.FindKey(ctx, []byte("fw-1")); err != nil || !found || got != id {
		t.Fatalf("FindKey after: %s %v %v, want %s", got, found, err, id)
	}
	if st := o.Queue.Stats(); st.Targets[0].Pending != 0 {
		t.Fatalf("a forwarded record counts as pending: %+v", st.Targets[0])
	}
	// A repeat is checked against the forwarded request, body included.
	again := &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("fw-1"), Body: []byte("dropped")}
	if got, err := o.Queue.AppendDraft(ctx, again); err != nil || !again.Duplicate || got != id {
		t.Fatalf("a repeat of a forwarded key: %s dup=%v %v", got, again.Duplicate, err)
	}
	other := &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("fw-1"), Body: []byte("2")}
	if _, err := o.Queue.AppendDraft(ctx, other); !errors.Is(err, store.ErrKeyMismatch) {
		t.Fatalf("another request with a forwarded key: %v, want ErrKeyMismatch", err)
	}
	ids := appendN(t, o.Queue, 2)
	c := o.Consumer("a")
	got := fetchAll(t, c, time.Now())
	if len(got) != 2 || got[0].Seq != ids[0].Seq() {
		t.Fatalf("fetched %d (the forwarded record must not be handed out)", len(got))
	}
	complete(t, c, got, delivered(time.Now()))
	check := func(q store.Queue) {
		t.Helper()
		var st []store.TargetStatus
		for range 200 { // the consumer records it without waiting
			var err error
			if _, st, err = q.Lookup(id); err != nil {
				t.Fatal(err)
			}
			if st[0].Phase == store.Delivered {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if st[0].Phase != store.Delivered || st[0].Attempts != 1 {
			t.Fatalf("the forwarded record's status: %+v", st[0])
		}
		if a, _ := st[0].Last(); a.Status != 201 {
			t.Fatalf("the forwarded record's status code: %+v", a)
		}
		if l, ok := q.(store.Lister); ok {
			c, _ := l.Counts("a", time.Time{}, time.Time{})
			if c.Accepted < 3 || c.Accepted != c.Delivered+c.Queued || c.Check() != nil {
				t.Fatalf("counts with a forwarded record: %+v", c)
			}
		}
	}
	check(o.Queue)
	// One more, that no consumer passes before a restart.
	id2, err := fr.AppendForwarded(ctx, &store.Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte("fw-2")}, 200)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = open(t, e, dir, "a")
	check(o.Queue)
	if got := fetchAll(t, o.Consumer("a"), time.Now()); len(got) != 0 {
		t.Fatalf("%d fetched after a restart", len(got))
	}
	for range 200 {
		if phase(t, o.Queue, id2, 0) == store.Delivered {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p := phase(t, o.Queue, id2, 0); p != store.Delivered {
		t.Fatalf("a forwarded record read first after a restart: %s", p)
	}
	if _, found, _ := o.Queue.(store.ForwardRecorder).FindKey(ctx, []byte("fw-1")); !found {
		t.Fatal("the forwarded key is forgotten after a restart")
	}
	// Its fingerprint too (read back from the head's log).
	again.Reset()
	again.Method, again.URI, again.IdempotencyKey, again.Body = []byte("POST"), []byte("/o"), []byte("fw-1"), []byte("dropped")
	if got, err := o.Queue.AppendDraft(ctx, again); err != nil || !again.Duplicate || got != id {
		t.Fatalf("a repeat of a forwarded key after a restart: %s dup=%v %v", got, again.Duplicate, err)
	}
}
