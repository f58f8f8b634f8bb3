package buffer

import (
	"context"
	"errors"
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
