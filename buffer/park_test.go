package buffer

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestParkUnparkKeepsOrderAndAttempts(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	appendN(t, q, 4)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	kA, kB := KeyHash([]byte("customer-a")), KeyHash([]byte("customer-b"))
	// ds[0] is in flight for A; ds[1], ds[3] wait behind it; ds[2] is B's.
	must(t, a.Park(context.Background(), ds[3], kA))
	must(t, a.Park(context.Background(), ds[1], kA))
	seq, ok, err := a.NextParked(kA)
	must(t, err)
	if !ok || seq != ds[1].Seq {
		t.Fatalf("NextParked(A) = %d %v, want the oldest, %d", seq, ok, ds[1].Seq)
	}
	if _, ok, _ := a.NextParked(kB); ok {
		t.Fatal("B has nothing parked")
	}
	_, st, _ := q.Lookup(ds[1].ID)
	if st[0].Phase != Parked || st[0].Attempts != 0 {
		t.Fatalf("parked status %+v", st[0])
	}
	// Parked messages survive a restart and are found again.
	must(t, s.Close())
	s, q = openTest(t, Config{Dir: dir}, "a")
	defer s.Close()
	a, _ = q.Consumer("a")
	var keys []uint64
	must(t, a.ParkedKeys(func(k [16]byte, oldest uint64) bool {
		if k == kA {
			keys = append(keys, oldest)
		}
		return true
	}))
	if len(keys) != 1 || keys[0] != ds[1].Seq {
		t.Fatalf("ParkedKeys after restart = %v", keys)
	}
	// The cursor passed them: only the two unparked messages come back new.
	if got := fetchAll(t, a); len(got) != 2 {
		t.Fatalf("fetched %d new after restart, want 2 (the parked stay parked)", len(got))
	}
	// Unpark the oldest: it is due as a first attempt, in the retry schedule.
	must(t, a.Unpark(context.Background(), ds[1].Seq, kA, time.Now()))
	due, err := a.Fetch(10, time.Now())
	must(t, err)
	if len(due) != 1 || due[0].Seq != ds[1].Seq || due[0].Attempt != 1 {
		t.Fatalf("after Unpark fetched %+v", due)
	}
	if seq, _, _ := a.NextParked(kA); seq != ds[3].Seq {
		t.Fatalf("next parked = %d, want %d", seq, ds[3].Seq)
	}
	if err := a.Unpark(context.Background(), ds[1].Seq, kA, time.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unpark twice: %v", err)
	}
}

func TestEachRetryListsTheSchedule(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	appendN(t, q, 3)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	due := time.Now().Add(time.Hour)
	must(t, a.Complete(context.Background(), ds[0], Outcome{Phase: Retrying, NextTry: due, Attempt: Attempt{Status: 503}}))
	must(t, a.Complete(context.Background(), ds[2], Outcome{Phase: Retrying, NextTry: due, Attempt: Attempt{Status: 503}}))
	var seqs []uint64
	must(t, a.EachRetry(func(m *Message, at time.Time) bool {
		if m.Method != "POST" || !at.Equal(time.Unix(0, due.UnixNano())) {
			t.Errorf("retry %d: %+v due %v", m.Seq, m, at)
		}
		seqs = append(seqs, m.Seq)
		return true
	}))
	if len(seqs) != 2 {
		t.Fatalf("EachRetry listed %v, want the two retrying", seqs)
	}
}

// stallWriter stops the writer once, right after its next successful write
// transaction and before it updates its in-memory view of that commit (retry
// counts, the in-flight set). It returns a channel closed when the writer is
// stopped there, and a func that lets it go on (also called at cleanup).
func stallWriter(t *testing.T) (stalled <-chan struct{}, resume func()) {
	st, res := make(chan struct{}), make(chan struct{})
	var once, resumeOnce sync.Once
	hook := func() {
		once.Do(func() {
			close(st)
			select {
			case <-res:
			case <-time.After(10 * time.Second):
			}
		})
	}
	afterUpdateHook.Store(&hook)
	resume = func() {
		afterUpdateHook.Store(nil)
		resumeOnce.Do(func() { close(res) })
	}
	t.Cleanup(resume)
	return st, resume
}

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestMadeDueNotHandedOutTwice: Unpark and Revive put a message that is not
// in flight into the retry schedule. A Fetch may run between that commit
// and the writer's bookkeeping of it; the message must still be handed out
// exactly once until its outcome. (It once was not: a Fetch in that window
// took it, the writer then dropped that Fetch's claim as if the Unpark had
// held it, and the next Fetch handed it out again, attempt 1 twice.)
func TestMadeDueNotHandedOutTwice(t *testing.T) {
	key := KeyHash([]byte("customer-a"))
	for _, tc := range []struct {
		name    string
		prepare func(*Consumer, *Delivery) // takes the fetched delivery out of the flow
		makeDue func(*Queue, *Consumer, uint64) error
	}{{
		name:    "unpark",
		prepare: func(a *Consumer, d *Delivery) { must(t, a.Park(context.Background(), d, key)) },
		makeDue: func(_ *Queue, a *Consumer, seq uint64) error {
			return a.Unpark(context.Background(), seq, key, time.Now())
		},
	}, {
		name: "revive",
		prepare: func(a *Consumer, d *Delivery) {
			must(t, a.Complete(context.Background(), d, Outcome{Phase: Dead, Attempt: Attempt{At: time.Now(), Status: 400}}))
		},
		makeDue: func(q *Queue, _ *Consumer, seq uint64) error {
			return q.Revive(context.Background(), "a", seq, time.Now())
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s, q := openTest(t, Config{}, "a")
			defer s.Close()
			appendN(t, q, 2)
			a, _ := q.Consumer("a")
			ds := fetchAll(t, a)
			if len(ds) != 2 {
				t.Fatalf("fetched %d, want 2", len(ds))
			}
			target := ds[0]
			tc.prepare(a, target)
			// Another retry in the segment, due later: Fetch reads the
			// segment's schedule before the writer has counted the new entry.
			must(t, a.Complete(context.Background(), ds[1], Outcome{Phase: Retrying, NextTry: time.Now().Add(time.Hour), Attempt: Attempt{Status: 503}}))

			stalled, resume := stallWriter(t)
			errc := make(chan error, 1)
			go func() { errc <- tc.makeDue(q, a, target.Seq) }()
			waitClosed(t, stalled, "the writer's commit")
			// The message is due in the store; the writer has not finished.
			inWindow, err := a.Fetch(10, time.Now())
			must(t, err)
			resume()
			must(t, <-errc)
			after, err := a.Fetch(10, time.Now())
			must(t, err)
			got := append(inWindow, after...)
			if len(got) != 1 || got[0].Seq != target.Seq || got[0].Attempt != 1 {
				t.Fatalf("fetched %v in the commit window and %v after it; want seq %d once, attempt 1",
					seqsOf(inWindow), seqsOf(after), target.Seq)
			}
			// It is under way: it must not be handed out again.
			if again, err := a.Fetch(10, time.Now()); err != nil || len(again) != 0 {
				t.Fatalf("Fetch while seq %d is in flight = %v, %v; want nothing", target.Seq, seqsOf(again), err)
			}
			if at, ok := a.NextRetry(); !ok || at.Before(time.Now().Add(30*time.Minute)) {
				t.Fatalf("NextRetry = %v %v, want only the later retry", at, ok)
			}
			// Its outcome ends the claim, and nothing is left due.
			deliver(t, a, got)
			if again, err := a.Fetch(10, time.Now()); err != nil || len(again) != 0 {
				t.Fatalf("Fetch after delivery = %v, %v; want nothing", seqsOf(again), err)
			}
			_, st, err := q.Lookup(target.ID)
			must(t, err)
			if st[0].Phase != Delivered || st[0].Attempts != 1 {
				t.Fatalf("state after delivery %+v", st[0])
			}
		})
	}
}

// TestUnparkOrReviveWhileInFlight: a message whose Park (or dead outcome) is
// committed but whose holder the writer has not released yet is still in
// flight; Unpark or Revive then fails and changes nothing, and works once
// the holder's claim has ended.
func TestUnparkOrReviveWhileInFlight(t *testing.T) {
	key := KeyHash([]byte("customer-a"))
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	appendN(t, q, 2)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	for i, d := range ds {
		stalled, resume := stallWriter(t)
		errc := make(chan error, 1)
		var again func() error
		if i == 0 {
			go func() { errc <- a.Park(context.Background(), d, key) }()
			again = func() error { return a.Unpark(context.Background(), d.Seq, key, time.Now()) }
		} else {
			go func() {
				errc <- a.Complete(context.Background(), d, Outcome{Phase: Dead, Attempt: Attempt{At: time.Now(), Status: 400}})
			}()
			again = func() error { return q.Revive(context.Background(), "a", d.Seq, time.Now()) }
		}
		waitClosed(t, stalled, "the writer's commit")
		// Committed (parked, or on the dead list), still in flight.
		if err := again(); err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("seq %d: made due while in flight: %v; want an in-flight error", d.Seq, err)
		}
		resume()
		must(t, <-errc)
		must(t, again())
	}
	got := fetchAll(t, a)
	if len(got) != 2 || got[0].Attempt != 1 || got[1].Attempt != 1 {
		t.Fatalf("after unpark and revive fetched %v, want both once", seqsOf(got))
	}
	deliver(t, a, got)
	if again := fetchAll(t, a); len(again) != 0 {
		t.Fatalf("fetched %v after delivery", seqsOf(again))
	}
}

func seqsOf(ds []*Delivery) []uint64 {
	var seqs []uint64
	for _, d := range ds {
		seqs = append(seqs, d.Seq)
	}
	return seqs
}

// TestUnparkN: UnparkN unparks a key's oldest parked messages, across
// segments, each once, and says when none is left.
func TestUnparkN(t *testing.T) {
	s, q := openTest(t, Config{SegmentBytes: 64 << 10}, "a")
	defer s.Close()
	for range 3 { // each about 70 KiB: the head rolls after each
		appendN(t, q, 70)
	}
	q.mu.Lock()
	segs := len(q.segs)
	q.mu.Unlock()
	if segs < 2 {
		t.Fatalf("%d segments; the test wants parked messages in several", segs)
	}
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	if len(ds) != 210 {
		t.Fatalf("fetched %d", len(ds))
	}
	kA, kB := KeyHash([]byte("a")), KeyHash([]byte("b"))
	var wantA []uint64
	for i, d := range ds {
		k := kB
		if i%2 == 0 {
			k = kA
			wantA = append(wantA, d.Seq)
		}
		must(t, a.Park(context.Background(), d, k))
	}
	slices.Sort(wantA)

	got, all, err := a.UnparkN(context.Background(), kA, 30, time.Now())
	must(t, err)
	if all || !slices.Equal(got, wantA[:30]) {
		t.Fatalf("UnparkN(30) = %v, all %v; want %v, false", got, all, wantA[:30])
	}
	if seq, ok, _ := a.NextParked(kA); !ok || seq != wantA[30] {
		t.Fatalf("NextParked = %d %v, want %d", seq, ok, wantA[30])
	}
	got2, all, err := a.UnparkN(context.Background(), kA, 1000, time.Now())
	must(t, err)
	if !all || !slices.Equal(got2, wantA[30:]) {
		t.Fatalf("UnparkN(1000) = %d seqs, all %v; want %d, true", len(got2), all, len(wantA)-30)
	}
	if got3, all, err := a.UnparkN(context.Background(), kA, 5, time.Now()); err != nil || len(got3) != 0 || !all {
		t.Fatalf("UnparkN with nothing parked = %v, %v, %v", got3, all, err)
	}
	if _, ok, _ := a.NextParked(kA); ok {
		t.Fatal("A still has parked messages")
	}
	if seq, ok, _ := a.NextParked(kB); !ok || seq != ds[1].Seq {
		t.Fatalf("B's oldest parked = %d %v, want %d", seq, ok, ds[1].Seq)
	}
	// Each unparked message is due once, as a first attempt.
	var fetched []uint64
	for _, d := range fetchAll(t, a) {
		if d.Attempt != 1 {
			t.Errorf("seq %d: attempt %d, want 1", d.Seq, d.Attempt)
		}
		fetched = append(fetched, d.Seq)
	}
	slices.Sort(fetched)
	if !slices.Equal(fetched, wantA) {
		t.Fatalf("fetched %d after UnparkN, want the %d unparked", len(fetched), len(wantA))
	}
}
