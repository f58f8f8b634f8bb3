package buffer

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// inspectCounts checks that inspect, offline, gives targets a and b of the
// store in dir the counts the queue gave, ca and cb.
func inspectCounts(t *testing.T, dir string, ca, cb store.Counts) {
	t.Helper()
	rep, err := Inspect(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range rep.Queues[0].Targets {
		want := ca
		if tr.Name == "b" {
			want = cb
		}
		want.Target = tr.Name
		if tr.Counts != want {
			t.Fatalf("inspect's counts of %s: %+v, the queue's %+v", tr.Name, tr.Counts, want)
		}
	}
}

// Expired messages stay listed and counted (as expired, with their id, key
// and time) after the retention deletes their segment, until one more
// retention has passed; the counts add up before and after, online and in
// inspect.
func TestExpiredTombstones(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10, Retention: time.Hour, Now: clock}, "a", "b")
	ctx := context.Background()
	var ids []ID
	for i := range 300 {
		d := &Draft{Method: []byte("POST"), URI: []byte("/o"), Body: kib, IdempotencyKey: []byte{'k', byte('0' + i%10), byte(i / 10)}}
		id, err := q.AppendDraft(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if q.Stats().Segments < 3 {
		t.Fatalf("no rolls: %+v", q.Stats())
	}
	a, _ := q.Consumer("a")
	b, _ := q.Consumer("b")
	ds := fetchAll(t, a)
	deliver(t, a, ds[:100])
	for _, d := range ds[100:] {
		a.Release(d)
	}
	bs := fetchAll(t, b)
	deliver(t, b, bs)
	before, err := q.Counts("a", time.Time{}, time.Time{})
	if err != nil || before.Accepted != 300 || before.Delivered != 100 || before.Queued != 200 || before.Check() != nil {
		t.Fatalf("counts before the retention: %+v %v", before, err)
	}

	advance(2 * time.Hour)
	deadline := time.Now().Add(10 * time.Second)
	for q.Stats().Segments > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := q.Stats()
	if st.Segments != 1 || st.Targets[0].Expired == 0 {
		t.Fatalf("after the retention: %+v", st)
	}
	expired := st.Targets[0].Expired
	ca, err := q.Counts("a", time.Time{}, time.Time{})
	if err != nil || ca.Expired != expired || ca.Check() != nil {
		t.Fatalf("counts of a after the retention: %+v %v, want %d expired", ca, err, expired)
	}
	if ca.Accepted != ca.Expired+ca.Queued || ca.Delivered != 0 {
		t.Fatalf("counts of a: %+v (the delivered went with their segments, the rest are expired or in the head)", ca)
	}
	cb, _ := q.Counts("b", time.Time{}, time.Time{})
	if cb.Expired != 0 || cb.Accepted != cb.Delivered || cb.Check() != nil {
		t.Fatalf("counts of b, which finished everything: %+v", cb)
	}
	var rows []store.Row
	if _, _, err := q.Messages(store.Filter{Target: "a", Phase: store.Expired}, 0, 1000, func(r *store.Row) bool {
		rows = append(rows, *r)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if uint64(len(rows)) != expired {
		t.Fatalf("%d expired rows listed, %d counted", len(rows), expired)
	}
	r := rows[0]
	if r.ID != ids[100] || r.Key == "" || r.AcceptedAt.IsZero() || r.Targets[0].Reason == "" || !r.Targets[0].At.Equal(clock()) {
		t.Fatalf("the first expired row: %+v, want id %s", r, ids[100])
	}
	// By key: the expired one, from its tombstone; a live one, from the index.
	for _, k := range []string{r.Key, string([]byte{'k', '9', 29})} {
		var byKey []store.Row
		if _, end, err := q.Messages(store.Filter{Key: k}, 0, 1000, func(r *store.Row) bool { byKey = append(byKey, *r); return true }); err != nil || !end {
			t.Fatalf("by key %q: end %v %v", k, end, err)
		}
		if len(byKey) != 1 || byKey[0].Key != k {
			t.Fatalf("by key %q: %+v", k, byKey)
		}
	}
	if byKey := 0; true {
		q.Messages(store.Filter{Key: "no-such-key"}, 0, 1000, func(*store.Row) bool { byKey++; return true })
		if byKey != 0 {
			t.Fatalf("%d rows for an unknown key", byKey)
		}
	}
	// b finished them: they are not b's.
	n := 0
	q.Messages(store.Filter{Target: "b"}, 0, 1000, func(*store.Row) bool { n++; return true })
	if uint64(n) != cb.Accepted {
		t.Fatalf("b lists %d, counts %d", n, cb.Accepted)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	inspectCounts(t, dir, ca, cb)

	// One more retention later the tombstones go.
	s2, q2 := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10, Retention: time.Hour, Now: clock}, "a", "b")
	defer s2.Close()
	advance(90 * time.Minute)
	for time.Now().Before(deadline) {
		c, _ := q2.Counts("a", time.Time{}, time.Time{})
		if c.Expired == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c, _ := q2.Counts("a", time.Time{}, time.Time{}); c.Expired != 0 {
		t.Fatalf("tombstones left after another retention: %+v", c)
	}
}

// A target added to a queue that already holds messages starts at the end
// of the log: the older messages are not its own, in the list, the counts
// (online and in inspect) and the retention's expired count.
func TestAddedTargetCountsOnlyItsMessages(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 64 << 10, Retention: time.Hour, Now: clock}
	s, q := openTest(t, cfg, "a")
	appendN(t, q, 100)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, q = openTest(t, cfg, "a", "b")
	defer s.Close()
	ids := appendN(t, q, 3)
	cb, err := q.Counts("b", time.Time{}, time.Time{})
	if err != nil || cb.Accepted != 3 || cb.Queued != 3 || cb.Check() != nil {
		t.Fatalf("counts of the new target: %+v %v", cb, err)
	}
	if ca, _ := q.Counts("a", time.Time{}, time.Time{}); ca.Accepted != 103 {
		t.Fatalf("counts of a: %+v", ca)
	}
	var got []ID
	q.Messages(store.Filter{Target: "b"}, 0, 1000, func(r *store.Row) bool { got = append(got, r.ID); return true })
	if len(got) != 3 || !slices.Contains(ids, got[0]) || !slices.Contains(ids, got[1]) || !slices.Contains(ids, got[2]) {
		t.Fatalf("b lists %v, want its 3: %v", got, ids)
	}
	// Expiry: the 100 older messages expire for a only.
	b, _ := q.Consumer("b")
	deliver(t, b, fetchAll(t, b))
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	// Every segment goes (the head too, once it rolls by age): a's 103
	// expired, b's 3 delivered and gone with their segment.
	var ca store.Counts
	for time.Now().Before(deadline) {
		ca, _ = q.Counts("a", time.Time{}, time.Time{})
		cb, _ = q.Counts("b", time.Time{}, time.Time{})
		if ca.Expired == 103 && cb.Accepted == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ca != (store.Counts{Target: "a", Accepted: 103, Expired: 103}) || cb != (store.Counts{Target: "b"}) {
		t.Fatalf("after the retention: a %+v, b %+v", ca, cb)
	}
	if st := q.Stats(); st.Targets[1].Expired != 0 {
		t.Fatalf("b's expired count: %+v", st.Targets[1])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	inspectCounts(t, dir, ca, cb)
}
