package buffer

import (
	"context"
	"testing"
	"time"
)

// TestNoReadTxWaitsForQueueLock: the readers of the retry schedule
// (NextRetry, EachRetry, Fetch of due retries) never wait for Queue.mu
// while they hold a read transaction (doc.go, "Lock order"): one held
// there would stop the writer from remapping a growing file, and a lister
// holding Queue.mu in Begin would wait for it, for ever. Each reader runs
// in a loop while the test takes Queue.mu again and again: a read
// transaction still open a quarter of a second into such a hold is one
// waiting for the lock.
func TestNoReadTxWaitsForQueueLock(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	appendN(t, q, 4)
	a, _ := q.Consumer("a")
	ds := fetchAll(t, a)
	for _, d := range ds[:3] {
		must(t, a.Complete(context.Background(), d, Outcome{Phase: Retrying, NextTry: time.Now().Add(time.Hour), Attempt: Attempt{Status: 503}}))
	}
	seg := q.segs[0]
	for _, c := range []struct {
		name string
		call func()
	}{
		{"NextRetry", func() { a.NextRetry() }},
		{"EachRetry", func() { a.EachRetry(func(*Message, time.Time) bool { return true }) }},
		{"Fetch", func() { // claims the due retries, and gives them back
			got, _ := a.Fetch(10, time.Now().Add(2*time.Hour))
			for _, d := range got {
				a.Release(d)
			}
		}},
	} {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
					c.call()
				}
			}
		}()
		stuck := 0
		for range 40 {
			q.mu.Lock()
			time.Sleep(5 * time.Millisecond)
			if seg.db.Stats().OpenTxN > 0 {
				time.Sleep(250 * time.Millisecond) // descheduled in a transaction, or waiting
				if seg.db.Stats().OpenTxN > 0 {
					stuck++
				}
			}
			q.mu.Unlock()
			time.Sleep(time.Millisecond)
			if stuck > 0 {
				break
			}
		}
		close(stop)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not return once Queue.mu was free", c.name)
		}
		if stuck > 0 {
			t.Errorf("%s held a read transaction open while it waited for Queue.mu", c.name)
		}
	}
	// The retries are still due and not in flight: all three come back.
	if got, err := a.Fetch(10, time.Now().Add(2*time.Hour)); err != nil || len(got) != 3 {
		t.Errorf("fetched %d due retries (%v), want 3", len(got), err)
	}
}
