package buffer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Close while hundreds of appends are being handed over, more than the
// hand-off channel holds (so some wait in hand's slow path): every Append
// returns, each with an id or ErrClosed, and every one that returned an id
// is there after a reopen. An acknowledged message is never dropped by a
// Close that raced its hand-off, and no caller is left waiting.
func TestCloseDuringAppends(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, Sync: SyncAlways}, "a")
	const senders, each = 3 * maxBatch / 2, 50
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		acked  = map[string]bool{}
		closed atomic.Int64
		other  = make(chan error, senders)
		count  atomic.Int64
	)
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				uri := fmt.Sprintf("/o?g=%d&i=%d", g, i)
				_, err := q.Append(context.Background(), &Message{Method: "POST", URI: uri, Body: kib})
				switch {
				case err == nil:
					mu.Lock()
					acked[uri] = true
					mu.Unlock()
					count.Add(1)
				case errors.Is(err, ErrClosed):
					closed.Add(1)
					return
				default:
					other <- err
					return
				}
			}
		}()
	}
	// Close once appends are flowing, while the senders are still at it.
	for deadline := time.Now().Add(10 * time.Second); count.Load() < senders && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	must(t, s.Close())
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("appends still waiting 20 s after Close")
	}
	close(other)
	for err := range other {
		t.Errorf("Append during Close: %v (want an id or ErrClosed)", err)
	}
	if closed.Load() == 0 {
		t.Fatalf("no Append saw ErrClosed (%d acknowledged): Close did not race the senders", len(acked))
	}

	s2, q2 := openTest(t, Config{Dir: dir, Sync: SyncAlways}, "a")
	defer s2.Close()
	c, _ := q2.Consumer("a")
	found := map[string]bool{}
	for _, d := range fetchAll(t, c) {
		found[d.URI] = true
	}
	for uri := range acked {
		if !found[uri] {
			t.Errorf("acknowledged %s is missing after the reopen", uri)
		}
	}
	t.Logf("%d acknowledged, %d senders saw ErrClosed, %d stored", len(acked), closed.Load(), len(found))
}

// An append that has passed hand's check for Close but not yet sent when
// Close begins is still committed and answered: Close waits for it.
func TestCloseWaitsForHandOffUnderWay(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	paused := make(chan struct{})
	var once sync.Once
	handPause = func() {
		once.Do(func() {
			close(paused)
			for deadline := time.Now().Add(5 * time.Second); !q.closed.Load() && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // the writer sees closing and drains meanwhile
		})
	}
	defer func() { handPause = nil }()
	type result struct {
		id  ID
		err error
	}
	got := make(chan result, 1)
	go func() {
		id, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/late", Body: kib})
		got <- result{id, err}
	}()
	<-paused
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	var r result
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the append under way at Close was never answered")
	}
	must(t, <-closed)
	if r.err != nil {
		t.Fatalf("append under way at Close: %v, want it committed (it had passed the check for Close)", r.err)
	}
	s2, q2 := openTest(t, Config{Dir: dir}, "a")
	defer s2.Close()
	c, _ := q2.Consumer("a")
	ds := fetchAll(t, c)
	if len(ds) != 1 || ds[0].URI != "/late" || ds[0].Seq != r.id.Seq() {
		t.Fatalf("after reopen: %d messages, want /late at seq %d", len(ds), r.id.Seq())
	}
}
