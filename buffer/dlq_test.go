package buffer

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDeadLettersListReviveAndPurge(t *testing.T) {
	s, q := openTest(t, Config{}, "a", "b")
	defer s.Close()
	appendN(t, q, 5)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	for i, d := range ds {
		ph := Delivered
		if i%2 == 0 {
			ph = Dead
		}
		must(t, a.Complete(context.Background(), d, Outcome{Phase: ph, Attempt: Attempt{At: time.Now(), Status: 400, Error: "status 400"}}))
	}
	dls, err := q.DeadLetters("a", 0, 100)
	must(t, err)
	if len(dls) != 3 || dls[0].State.Phase != Dead || dls[0].Message.Method != "POST" || dls[0].State.History[0].Status != 400 {
		t.Fatalf("dead letters = %+v", dls)
	}
	if other, _ := q.DeadLetters("b", 0, 100); len(other) != 0 {
		t.Fatalf("target b has %d dead letters, want 0", len(other))
	}
	// Paging.
	page, _ := q.DeadLetters("a", dls[0].Message.Seq, 1)
	if len(page) != 1 || page[0].Message.Seq != dls[1].Message.Seq {
		t.Fatalf("page after %d = %+v", dls[0].Message.Seq, page)
	}
	// Revive one: it is due now, attempt 1, and off the list.
	must(t, q.Revive(context.Background(), "a", dls[0].Message.Seq, time.Now()))
	due, err := a.Fetch(10, time.Now())
	must(t, err)
	if len(due) != 1 || due[0].Seq != dls[0].Message.Seq || due[0].Attempt != 1 {
		t.Fatalf("after revive fetched %+v", due)
	}
	must(t, a.Complete(context.Background(), due[0], Outcome{Phase: Delivered, Attempt: Attempt{Status: 200}}))
	// Purge another.
	must(t, q.Purge(context.Background(), "a", dls[1].Message.Seq))
	left, _ := q.DeadLetters("a", 0, 100)
	if len(left) != 1 || left[0].Message.Seq != dls[2].Message.Seq {
		t.Fatalf("left = %+v", left)
	}
	if err := q.Purge(context.Background(), "a", dls[1].Message.Seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purge twice: %v", err)
	}
	_, st, _ := q.Lookup(dls[0].Message.ID)
	if st[0].Phase != Delivered || len(st[0].History) != 3 {
		t.Fatalf("revived message status = %+v", st[0])
	}
}

// TestDeadLettersWhileAppending lists dead letters while the writer
// appends (an admin API lists them while traffic flows): under -race, the
// list must not read a segment's last seq unlocked.
func TestDeadLettersWhileAppending(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	stop, listed := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			if _, err := q.DeadLetters("a", 0, 10); err != nil {
				listed <- err
				return
			}
			select {
			case <-stop:
				listed <- nil
				return
			default:
			}
		}
	}()
	appendN(t, q, 200)
	close(stop)
	must(t, <-listed)
}
