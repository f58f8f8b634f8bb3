package buffer

import (
	"context"
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
)

func openTest(t *testing.T, cfg Config, targets ...string) (*Store, *Queue) {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if len(targets) == 0 {
		targets = []string{"a", "b"}
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	q, err := s.Queue("orders", targets)
	if err != nil {
		t.Fatal(err)
	}
	return s, q
}

var kib = make([]byte, 1024)

func appendN(t *testing.T, q *Queue, n int) []ID {
	t.Helper()
	ids := make([]ID, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := q.Append(context.Background(), &Message{Method: "POST", URI: fmt.Sprintf("/o?i=%d", i), Body: append([]byte(fmt.Sprint(i)), kib...)})
			ids[i] = id
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func fetchAll(t *testing.T, c *Consumer) []*Delivery {
	t.Helper()
	return fetchAllAt(t, c, time.Time{})
}

// fetchAllAt fetches until the consumer runs dry, as of at (zero: now at
// each Fetch).
func fetchAllAt(t *testing.T, c *Consumer, at time.Time) []*Delivery {
	t.Helper()
	var all []*Delivery
	for range 10000 {
		now := at
		if now.IsZero() {
			now = time.Now()
		}
		ds, err := c.Fetch(64, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return all
		}
		all = append(all, ds...)
	}
	t.Fatal("Fetch never ran dry")
	return nil
}

func deliver(t *testing.T, c *Consumer, ds []*Delivery) {
	t.Helper()
	for _, d := range ds {
		if err := c.Complete(context.Background(), d, Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAppendFetchCompleteFanOut(t *testing.T) {
	s, q := openTest(t, Config{})
	defer s.Close()
	ids := appendN(t, q, 200)
	seen := map[ID]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %v", id)
		}
		seen[id] = true
	}
	a, _ := q.Consumer("a")
	b, _ := q.Consumer("b")
	da := fetchAll(t, a)
	if len(da) != 200 {
		t.Fatalf("target a fetched %d, want 200", len(da))
	}
	for i := 1; i < len(da); i++ {
		if da[i].Seq <= da[i-1].Seq {
			t.Fatalf("fetch out of order at %d", i)
		}
	}
	deliver(t, a, da)
	// b is independent: it still has everything.
	db := fetchAll(t, b)
	if len(db) != 200 {
		t.Fatalf("target b fetched %d, want 200", len(db))
	}
	_, st, err := q.Lookup(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Phase != Delivered || st[0].History[0].Status != 200 || st[1].Phase != InFlight {
		t.Fatalf("status = %+v", st)
	}
	stats := q.Stats()
	if stats.Targets[0].Floor != 201 || stats.Targets[1].InFlight != 200 {
		t.Fatalf("stats = %+v", stats)
	}
}

func TestLookupRejectsGuessedID(t *testing.T) {
	s, q := openTest(t, Config{})
	defer s.Close()
	ids := appendN(t, q, 1)
	tag := ids[0].Tag()
	tag[0] ^= 1
	guess := store.NewID(ids[0].Seq(), tag)
	if _, _, err := q.Lookup(guess); !errors.Is(err, ErrNotFound) {
		t.Fatalf("guessed id: err = %v, want ErrNotFound", err)
	}
	if _, _, err := q.Lookup(store.NewID(999, [8]byte{})); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown seq: err = %v", err)
	}
	m, st, err := q.Lookup(ids[0])
	if err != nil || m.Method != "POST" || st[0].Phase != Queued {
		t.Fatalf("lookup = %+v %+v %v", m, st, err)
	}
}

func TestRetryScheduleAndDead(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	appendN(t, q, 3)
	c, _ := q.Consumer("a")
	ds := fetchAll(t, c)
	now := time.Now()
	// 1: retry in 1h; 2: retry now-ish; 3: dead.
	must(t, c.Complete(context.Background(), ds[0], Outcome{Phase: Retrying, NextTry: now.Add(time.Hour), Attempt: Attempt{Status: 503}}))
	must(t, c.Complete(context.Background(), ds[1], Outcome{Phase: Retrying, NextTry: now.Add(-time.Second), Attempt: Attempt{Status: 500}}))
	must(t, c.Complete(context.Background(), ds[2], Outcome{Phase: Dead, Attempt: Attempt{Status: 400}}))

	due, err := c.Fetch(10, now)
	must(t, err)
	if len(due) != 1 || due[0].Seq != ds[1].Seq || due[0].Attempt != 2 || due[0].Prior.Phase != Retrying {
		t.Fatalf("due = %+v", due)
	}
	// In flight: not handed out twice.
	if again, _ := c.Fetch(10, now); len(again) != 0 {
		t.Fatalf("fetched an in-flight retry again: %+v", again)
	}
	next, ok := c.NextRetry()
	if !ok || !next.Equal(time.Unix(0, now.Add(time.Hour).UnixNano())) {
		t.Fatalf("NextRetry = %v %v", next, ok)
	}
	must(t, c.Complete(context.Background(), due[0], Outcome{Phase: Delivered, Attempt: Attempt{Status: 200}}))
	_, st, _ := q.Lookup(due[0].ID)
	if st[0].Phase != Delivered || st[0].Attempts != 2 || len(st[0].History) != 2 || st[0].History[0].Status != 500 {
		t.Fatalf("after retry: %+v", st[0])
	}
	if got := q.Stats().Targets[0].Retrying; got != 1 {
		t.Fatalf("retrying = %d, want 1", got)
	}
	// The 1h retry comes due at its time.
	later, _ := c.Fetch(10, now.Add(2*time.Hour))
	if len(later) != 1 || later[0].Seq != ds[0].Seq {
		t.Fatalf("later = %+v", later)
	}
}

// CompleteBatch hands the writer every kind of outcome at once: first
// Delivered outcomes (to the journal), later outcomes and failures (to
// bbolt, with their retry and dead-letter entries), and one it refuses
// before handing anything over. Each gets its own answer and effect, and
// the refused one stays in flight.
func TestCompleteBatchMixesKinds(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	ids := appendN(t, q, 4)
	c, _ := q.Consumer("a")
	ds := fetchAll(t, c)
	if len(ds) != 4 {
		t.Fatalf("fetched %d, want 4", len(ds))
	}
	now := time.Now()
	must(t, c.Complete(context.Background(), ds[0], Outcome{Phase: Retrying, NextTry: now.Add(-time.Second), Attempt: Attempt{Status: 503}}))
	due, err := c.Fetch(10, now)
	must(t, err)
	if len(due) != 1 || due[0].Prior == nil {
		t.Fatalf("due = %+v", due)
	}
	if got := q.Stats().Targets[0].Retrying; got != 1 {
		t.Fatalf("retrying = %d, want 1", got)
	}
	batch := []*Delivery{ds[1], ds[2], due[0], ds[3]}
	outs := []Outcome{
		{Phase: Delivered, Attempt: Attempt{Status: 200}},
		{Phase: Retrying, Attempt: Attempt{Status: 503}}, // no NextTry: refused
		{Phase: Delivered, Attempt: Attempt{Status: 201}},
		{Phase: Dead, Attempt: Attempt{Status: 400}},
	}
	errs := c.CompleteBatch(context.Background(), batch, outs)
	for i, want := range []bool{false, true, false, false} {
		if (errs[i] != nil) != want {
			t.Fatalf("errs[%d] = %v, want an error: %v", i, errs[i], want)
		}
	}
	want := map[uint64]struct {
		phase    Phase
		attempts int
	}{ds[1].Seq: {Delivered, 1}, due[0].Seq: {Delivered, 2}, ds[3].Seq: {Dead, 1}}
	for _, id := range ids {
		_, st, err := q.Lookup(id)
		must(t, err)
		w, ok := want[id.Seq()]
		if !ok {
			if st[0].Phase != InFlight || st[0].Attempts != 0 {
				t.Fatalf("seq %d: %+v, want in flight, no outcome", id.Seq(), st[0])
			}
			continue
		}
		if st[0].Phase != w.phase || st[0].Attempts != w.attempts {
			t.Fatalf("seq %d: phase %s attempts %d, want %s %d", id.Seq(), st[0].Phase, st[0].Attempts, w.phase, w.attempts)
		}
	}
	ts := q.Stats().Targets[0]
	if ts.Retrying != 0 || ts.InFlight != 1 || ts.Floor != ds[2].Seq {
		t.Fatalf("stats = %+v, want no retry and seq %d alone in flight", ts, ds[2].Seq)
	}
	dead, err := q.DeadLetters("a", 0, 10)
	must(t, err)
	if len(dead) != 1 || dead[0].Message.Seq != ds[3].Seq {
		t.Fatalf("dead letters = %+v, want seq %d", dead, ds[3].Seq)
	}
}

func TestRestartResumesWithoutRedelivering(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir})
	appendN(t, q, 100)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	deliver(t, a, ds[:60])
	// 60..69 "in flight" at the crash; the rest never fetched... but all were fetched
	// here, so after restart everything not completed (40) must come back.
	must(t, s.Close())

	s2, q2 := openTest(t, Config{Dir: dir})
	defer s2.Close()
	a2, _ := q2.Consumer("a")
	again := fetchAll(t, a2)
	if len(again) != 40 || again[0].Seq != ds[60].Seq {
		t.Fatalf("after restart fetched %d (first %v), want 40 from seq %d", len(again), again[0].Seq, ds[60].Seq)
	}
	b2, _ := q2.Consumer("b")
	if got := len(fetchAll(t, b2)); got != 100 {
		t.Fatalf("target b after restart: %d, want 100", got)
	}
	// New appends continue the sequence.
	ids := appendN(t, q2, 1)
	if ids[0].Seq() != 101 {
		t.Fatalf("seq after restart = %d, want 101", ids[0].Seq())
	}
}

// Floors are saved lazily; after a crash the consumer re-reads from an older
// floor and must skip what already has an outcome.
func TestStaleFloorSkipsFinished(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, CursorInterval: time.Hour}, "a")
	appendN(t, q, 50)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	deliver(t, a, ds[:30])
	// Simulate a crash before the floor was saved: drop the writer's final save.
	q.mu.Lock()
	a.next, a.inflight = 1, map[uint64]struct{}{}
	q.mu.Unlock()
	must(t, s.Close())

	s2, q2 := openTest(t, Config{Dir: dir}, "a")
	defer s2.Close()
	a2, _ := q2.Consumer("a")
	if got := len(fetchAll(t, a2)); got != 20 {
		t.Fatalf("fetched %d after stale floor, want 20", got)
	}
}

func TestSegmentRollAndRetention(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10, Retention: time.Hour, Now: clock}, "a")
	defer s.Close()
	for range 20 {
		appendN(t, q, 20) // 400 messages of ~1 KiB over several 64 KiB segments
	}
	t.Logf("segments: %d", q.Stats().Segments)
	if q.Stats().Segments < 2 {
		t.Fatalf("no roll: %+v", q.Stats())
	}
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	if len(ds) != 400 {
		t.Fatalf("fetched %d across segments, want 400", len(ds))
	}
	deliver(t, a, ds[:100])
	segsBefore := q.Stats().Segments

	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	// The 300 undelivered in old segments are in flight; release them so retention may expire them.
	for _, d := range ds[100:] {
		a.Release(d)
	}
	// The writer enforces retention once a second.
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().Segments > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := q.Stats()
	if st.Segments != 1 {
		t.Fatalf("segments after retention = %d (before %d), want only the head", st.Segments, segsBefore)
	}
	// The files go after the segment leaves the queue's list.
	files, _ := filepath.Glob(filepath.Join(dir, "queues", "orders", "seg-*.db"))
	for len(files) > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		files, _ = filepath.Glob(filepath.Join(dir, "queues", "orders", "seg-*.db"))
	}
	if len(files) != 1 {
		t.Fatalf("segment files on disk: %v", files)
	}
	if st.Expired == 0 {
		t.Fatal("undelivered messages expired without being counted")
	}
	if got := st.Targets[0].Expired; got != st.Expired {
		t.Fatalf("target a's expired count %d, the queue's %d (a is its only target)", got, st.Expired)
	}
	// The consumer skips the gap and reads what is left in the head.
	rest := fetchAll(t, a)
	for _, d := range rest {
		if _, _, err := q.Lookup(d.ID); err != nil {
			t.Fatalf("remaining message %d: %v", d.Seq, err)
		}
	}
	if _, _, err := q.Lookup(ds[0].ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired message lookup: %v", err)
	}
}

func TestMaxBytesRefusesAndRecovers(t *testing.T) {
	s, q := openTest(t, Config{MaxBytes: 1}, "a")
	defer s.Close()
	_, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/"})
	if !errors.Is(err, ErrFull) {
		t.Fatalf("err = %v, want ErrFull", err)
	}
	s.cfg.MaxBytes = 0
	if _, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/"}); err != nil {
		t.Fatalf("after space freed: %v", err)
	}
}

func TestDamagedRecordIsDeadNotDelivered(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	ids := appendN(t, q, 3)
	sort.Slice(ids, func(i, j int) bool { return ids[i].Seq() < ids[j].Seq() })
	// Damage the middle record in place through bbolt.
	q.mu.Lock()
	seg := q.segs[0]
	q.mu.Unlock()
	must(t, corruptRecord(seg, ids[1].Seq()))
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	if len(ds) != 2 || ds[0].Seq != ids[0].Seq() || ds[1].Seq != ids[2].Seq() {
		t.Fatalf("fetched %+v, want the two healthy records", ds)
	}
	deliver(t, a, ds)
	// Wait for the async dead mark to commit.
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().Targets[0].InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if _, _, err := q.Lookup(ids[1]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("lookup of damaged record: %v, want ErrCorrupt", err)
	}
	must(t, s.Close())
}

var must = testutil.Must

// corruptRecord flips one byte of the stored record seq, as a bad disk would.
func corruptRecord(seg *segment, seq uint64) error {
	seg.log.mu.RLock()
	loc, err := seg.log.locLocked(seq)
	seg.log.mu.RUnlock()
	if err != nil {
		return err
	}
	at := int64(loc.off) + frameHeader + int64(loc.n)/2
	var b [1]byte
	if _, err := seg.log.f.ReadAt(b[:], at); err != nil {
		return err
	}
	b[0] ^= 0x20
	_, err = seg.log.f.WriteAt(b[:], at)
	return err
}

// A roll leaves an empty head; reopening must neither re-roll it nor lose
// the sequence.
func TestReopenAfterRoll(t *testing.T) {
	dir := t.TempDir()
	for round := range 3 {
		s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
		appendN(t, q, 100)
		must(t, s.Close())
		s, q = openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
		ids := appendN(t, q, 1)
		if want := uint64(100*(round+1) + round + 1); ids[0].Seq() != want {
			t.Fatalf("round %d: seq %d after reopen, want %d", round, ids[0].Seq(), want)
		}
		must(t, s.Close())
	}
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
	defer s.Close()
	if q.Stats().Segments < 3 {
		t.Fatalf("segments = %d, want several", q.Stats().Segments)
	}
	a, _ := q.Consumer("a")
	if got := len(fetchAll(t, a)); got != 303 {
		t.Fatalf("fetched %d across reopened segments, want 303", got)
	}
}

// An outcome that cannot be written keeps its message in flight, so the
// floor never passes it and a restart attempts it again.
func TestFailedOutcomeKeepsFloor(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	appendN(t, q, 2)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	q.mu.Lock()
	seg := q.segs[0]
	q.mu.Unlock()
	// Break the outcome journal under the writer: a Delivered outcome
	// (journalled) fails.
	must(t, q.jrn.f.Close())
	err := a.Complete(context.Background(), ds[0], Outcome{Phase: Delivered, Attempt: Attempt{Status: 200}})
	if !errors.Is(err, ErrIO) {
		t.Fatalf("Complete with a broken journal: %v, want ErrIO", err)
	}
	// Break the segment's file under the writer: a Dead outcome (written
	// to bbolt) fails.
	must(t, seg.db.Close())
	err = a.Complete(context.Background(), ds[1], Outcome{Phase: Dead, Attempt: Attempt{Status: 400}})
	if !errors.Is(err, ErrIO) {
		t.Fatalf("Complete on a broken segment: %v, want ErrIO", err)
	}
	if f := q.Stats().Targets[0].Floor; f != ds[0].Seq {
		t.Fatalf("floor = %d after failed outcomes, want it held at %d", f, ds[0].Seq)
	}
}

// Past max_bytes appends are refused with a Retry-After estimate; once the
// targets finish the oldest segment it is deleted early and appends are
// accepted again.
func TestFullFreesFinishedSegmentsEarly(t *testing.T) {
	s, q := openTest(t, Config{SegmentBytes: 64 << 10, MaxBytes: 300 << 10, CursorInterval: 20 * time.Millisecond}, "a")
	defer s.Close()
	var err error
	n := 0
	for n = 0; n < 2000; n++ {
		if _, err = q.Append(context.Background(), &Message{Method: "POST", URI: "/", Body: kib}); err != nil {
			break
		}
	}
	var fe *FullError
	if !errors.As(err, &fe) || !errors.Is(err, ErrFull) || fe.RetryAfter < time.Second {
		t.Fatalf("after %d appends: err = %v, want a *FullError with RetryAfter >= 1s", n, err)
	}
	// Deliver everything; the writer deletes finished segments within ~1s.
	a, _ := q.Consumer("a")
	deliver(t, a, fetchAll(t, a))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err = q.Append(context.Background(), &Message{Method: "POST", URI: "/", Body: kib}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("still refused after every message was delivered: %v (stats %+v)", err, q.Stats())
	}
	// What went early was delivered, though its outcomes may still have
	// been in the journal only: nothing expired undelivered.
	if st := q.Stats(); st.Expired != 0 || st.Targets[0].Expired != 0 {
		t.Fatalf("a finished segment freed early counted %d expired (target a: %d), want 0", st.Expired, st.Targets[0].Expired)
	}
	c, err := q.Counts("a", time.Time{}, time.Time{})
	if err != nil || c.Expired != 0 {
		t.Fatalf("counts after freeing early: %+v, %v; want none expired", c, err)
	}
}

// TestPressureKeepsYoungSegmentUncheckpointed: under admission pressure
// every refused append (at most one each 50ms) looks for a segment to free.
// While the oldest segment is young and a target is still delivering it,
// nothing can go, and the pass must not checkpoint its delivered outcomes
// into bbolt: that costs a bbolt transaction and fsyncs on the writer, up to
// 20 times a second instead of the once a second of the retention tick.
func TestPressureKeepsYoungSegmentUncheckpointed(t *testing.T) {
	s, q := openTest(t, Config{SegmentBytes: 64 << 10, MaxBytes: 300 << 10}, "a")
	defer s.Close()
	var err error
	for n := 0; n < 2000 && err == nil; n++ {
		_, err = q.Append(context.Background(), &Message{Method: "POST", URI: "/", Body: kib})
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("err = %v, want ErrFull", err)
	}
	segs := q.Stats().Segments
	if segs < 3 {
		t.Fatalf("%d segments, want several", segs)
	}
	a, _ := q.Consumer("a")
	const rounds = 20
	start, ck0 := time.Now(), q.WriterStats().Checkpoints
	for i := range rounds {
		// One more outcome pending in the oldest segment, then a refused
		// append past the 50ms between two pressure passes.
		ds, err := a.Fetch(1, time.Now())
		if err != nil || len(ds) != 1 {
			t.Fatalf("round %d: fetched %d, err %v", i, len(ds), err)
		}
		deliver(t, a, ds)
		time.Sleep(60 * time.Millisecond)
		if _, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/", Body: kib}); !errors.Is(err, ErrFull) {
			t.Fatalf("round %d: append err = %v, want ErrFull", i, err)
		}
	}
	// The retention tick checkpoints once a second whatever happens.
	ticks := uint64(time.Since(start)/time.Second) + 1
	if got := q.WriterStats().Checkpoints - ck0; got > ticks {
		t.Fatalf("%d checkpoints over %d refused appends in %v, want at most %d (one a tick)",
			got, rounds, time.Since(start).Round(time.Millisecond), ticks)
	}
	if got := q.Stats().Segments; got != segs {
		t.Fatalf("segments %d -> %d: a young, unfinished segment was deleted", segs, got)
	}
}

// A write that fails (here bbolt's own size limit, standing in for ENOSPC)
// fails only the appends of that commit, with ErrIO; nothing accepted before
// is harmed, and the store accepts again once it can write.
func TestWriteErrorFailsOnlyThatCommit(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 8 << 20, maxFileBytes: 1 << 20}, "a")
	acked := appendUntilIOError(t, q)
	// Still serving reads; every acknowledged message is intact.
	for _, id := range acked {
		if _, _, err := q.Lookup(id); err != nil {
			t.Fatalf("acknowledged %v after the write error: %v", id, err)
		}
	}
	must(t, s.Close())
	reopenServesAll(t, dir, len(acked))
}

// appendUntilIOError appends 1 KiB messages until one fails (5000 at most),
// requires that failure to be ErrIO, and returns the acknowledged ids.
func appendUntilIOError(t *testing.T, q *Queue) []ID {
	t.Helper()
	var acked []ID
	var err error
	for range 5000 {
		var id ID
		if id, err = q.Append(context.Background(), &Message{Method: "POST", URI: "/", Body: kib}); err != nil {
			break
		}
		acked = append(acked, id)
	}
	if !errors.Is(err, ErrIO) {
		t.Fatalf("after %d appends: err = %v, want ErrIO", len(acked), err)
	}
	return acked
}

// reopenServesAll reopens dir as if the disk had been freed (no size limit),
// appends one message, and requires target a to be handed the acked ones
// and that one.
func reopenServesAll(t *testing.T, dir string, acked int) {
	t.Helper()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 8 << 20}, "a")
	defer s.Close()
	if _, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/", Body: kib}); err != nil {
		t.Fatalf("append after space freed: %v", err)
	}
	a, _ := q.Consumer("a")
	if got := len(fetchAll(t, a)); got != acked+1 {
		t.Fatalf("fetched %d, want %d", got, acked+1)
	}
}

// A quiet head rolls by age, so retention can delete data at a finer grain
// than the whole retention period.
func TestSegmentRollsByAge(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s, q := openTest(t, Config{Retention: 24 * time.Hour, Now: clock}, "a")
	defer s.Close()
	appendN(t, q, 3)
	mu.Lock()
	now = now.Add(61 * time.Minute) // SegmentAge defaults to Retention/24 = 1h
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().Segments < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := q.Stats().Segments; got != 2 {
		t.Fatalf("segments = %d after the head aged, want 2", got)
	}
	// An empty head does not roll again.
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	time.Sleep(1500 * time.Millisecond)
	if got := q.Stats().Segments; got != 2 {
		t.Fatalf("an empty head rolled: %d segments", got)
	}
}

func TestCapturedResponseKeptWithState(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	ids := appendN(t, q, 1)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	resp := &Response{Status: 201, Header: []Header{{Name: "Location", Value: "/orders/9"}}, Body: []byte(`{"order_no":9}`)}
	must(t, a.Complete(context.Background(), ds[0], Outcome{Phase: Delivered, Attempt: Attempt{Status: 201}, Response: resp}))
	_, st, err := q.Lookup(ids[0])
	must(t, err)
	if st[0].Response == nil || st[0].Response.Status != 201 || string(st[0].Response.Body) != `{"order_no":9}` || st[0].Response.Header[0].Value != "/orders/9" {
		t.Fatalf("captured response = %+v", st[0].Response)
	}
}

// Retry-After follows the delivery rate from its first sample: with 20
// messages finished in the first second of a drain, it says how long the
// rest of the oldest segment takes at 20/s (the average started from 0
// said five times that).
func TestRetryAfterFollowsDrainRate(t *testing.T) {
	s, q := openTest(t, Config{SegmentBytes: 64 << 10}, "a")
	defer s.Close()
	for range 4 {
		appendN(t, q, 50)
	}
	q.mu.Lock()
	t0 := time.Now()
	q.trackRates(t0)
	q.mu.Unlock()
	a, _ := q.Consumer("a")
	ds, err := a.Fetch(20, time.Now())
	must(t, err)
	deliver(t, a, ds)
	q.mu.Lock()
	q.trackRates(t0.Add(time.Second))
	left := q.segs[0].last + 1 - a.floorLocked()
	q.mu.Unlock()
	if len(q.segs) < 2 || left == 0 {
		t.Fatalf("want a sealed oldest segment with messages left (%d segments, %d left)", len(q.segs), left)
	}
	want := time.Duration(left) * time.Second / 20
	d, ok := q.retryAfter()
	if !ok || d < want*8/10 || d > want*12/10 {
		t.Fatalf("retryAfter = %v, %v; want ~%v (%d left at 20/s)", d, ok, want, left)
	}
}

// OldestPending names the acceptance time of the message at the target's
// floor, and nothing once everything is finished.
func TestOldestPending(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	t0 := time.Unix(1_800_000_000, 0)
	for i := range 3 {
		_, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/", EnqueuedAt: t0.Add(time.Duration(i) * time.Second)})
		must(t, err)
	}
	if at, ok := q.OldestPending("a"); !ok || !at.Equal(t0) {
		t.Fatalf("OldestPending = %v %v, want %v", at, ok, t0)
	}
	a, _ := q.Consumer("a")
	ds, err := a.Fetch(1, time.Now())
	must(t, err)
	deliver(t, a, ds)
	if at, ok := q.OldestPending("a"); !ok || !at.Equal(t0.Add(time.Second)) {
		t.Fatalf("after one delivery: %v %v, want %v", at, ok, t0.Add(time.Second))
	}
	deliver(t, a, fetchAll(t, a))
	if at, ok := q.OldestPending("a"); ok {
		t.Fatalf("nothing pending, yet OldestPending = %v", at)
	}
}

// ObserveSync hears of every fdatasync the group commit makes.
func TestObserveSync(t *testing.T) {
	var mu sync.Mutex
	var n int
	s, q := openTest(t, Config{ObserveSync: func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if d <= 0 {
			t.Errorf("a sync of %v", d)
		}
		n++
	}}, "a")
	defer s.Close()
	appendN(t, q, 10)
	mu.Lock()
	defer mu.Unlock()
	if n == 0 {
		t.Fatal("10 appends with fsync always, and no sync observed")
	}
}

// AppendDrafts is all or nothing: the drafts of one call share one write,
// so a write that fails refuses every one of them and stores none, and a
// write that succeeds stores them all, with consecutive seqs.
func TestAppendDraftsAllOrNothing(t *testing.T) {
	s, q := openTest(t, Config{maxFileBytes: 1 << 20, SegmentBytes: 8 << 20}, "a")
	defer s.Close()
	drafts := func(n int) []*Draft {
		ds := make([]*Draft, n)
		for i := range ds {
			ds[i] = &Draft{Method: []byte("POST"), URI: []byte(fmt.Sprintf("/d/%d", i)), Body: kib}
		}
		return ds
	}
	ids, errs := q.AppendDrafts(context.Background(), drafts(20))
	for i, err := range errs {
		must(t, err)
		if i > 0 && ids[i].Seq() != ids[i-1].Seq()+1 {
			t.Fatalf("seqs of one batch are not consecutive: %d after %d", ids[i].Seq(), ids[i-1].Seq())
		}
	}
	before := q.Stats().Appended
	// 1100 more KiB do not fit under the 1 MiB limit: the write fails.
	_, errs = q.AppendDrafts(context.Background(), drafts(1100))
	for i, err := range errs {
		if !errors.Is(err, ErrIO) {
			t.Fatalf("draft %d of a batch whose write failed: %v, want ErrIO", i, err)
		}
	}
	if after := q.Stats().Appended; after != before {
		t.Fatalf("a failed batch stored %d messages", after-before)
	}
	a, _ := q.Consumer("a")
	if n := len(fetchAll(t, a)); n != 20 {
		t.Fatalf("%d messages served, want the 20 of the first batch", n)
	}
}
