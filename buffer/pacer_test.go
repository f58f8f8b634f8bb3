package buffer

import (
	"context"
	"sync"
	"testing"
	"time"
)

// The pacer delays only under load, and only while delays gather requests.
func TestPacer(t *testing.T) {
	p := newPacer()
	if p.wait(1) {
		t.Fatal("delayed the first commit, with no load seen yet")
	}
	p.committed(1)
	if p.wait(1) {
		t.Fatal("delayed a commit after one of 1 request: a lone client must never wait")
	}
	p.committed(paceSiblings)
	if !p.wait(10) {
		t.Fatal("did not delay under load")
	}
	if p.wait(paceFull) {
		t.Fatalf("delayed a commit that already has %d requests", paceFull)
	}
	// Delays that gather nothing (a closed loop whose clients are all in the
	// commit already) stop the delaying within a few commits...
	stopped := -1
	for i := 0; i < 20; i++ {
		if !p.wait(paceSiblings) {
			stopped = i
			break
		}
		p.waited(0)
		p.committed(paceSiblings)
	}
	if stopped < 0 || stopped > 3 {
		t.Fatalf("delays that gathered nothing went on for %d commits", stopped)
	}
	// ...except for one probe every paceProbe commits.
	waits := 0
	for i := 0; i < 10*paceProbe; i++ {
		if p.wait(paceSiblings) {
			waits++
			p.waited(0)
		}
		p.committed(paceSiblings)
	}
	if waits < 9 || waits > 11 {
		t.Fatalf("%d delays in %d fruitless commits, want one per %d", waits, 10*paceProbe, paceProbe)
	}
	// A probe that pays (more arrive during the delay) resumes the delaying.
	for i := 0; i < 5*paceProbe && !p.wait(paceSiblings); i++ {
		p.committed(paceSiblings)
	}
	for i := 0; i < 4; i++ {
		if !p.wait(paceSiblings) {
			t.Fatalf("stopped delaying after %d delays that gathered %d requests each", i, 4*paceGain)
		}
		p.waited(4 * paceGain)
		p.committed(paceSiblings + 4*paceGain)
	}
}

// A queue with the commit delay on acknowledges every append after its
// fsync like any other: a lone client is never delayed, and under load the
// writer's delays are counted, at least CommitDelay each.
func TestCommitDelay(t *testing.T) {
	dir := t.TempDir()
	const delay = 2 * time.Millisecond
	s, q := openTest(t, Config{Dir: dir, CommitDelay: delay}, "t")
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if _, err := q.Append(ctx, &Message{Method: "POST", URI: "/", Body: []byte("lone")}); err != nil {
			t.Fatal(err)
		}
	}
	if ws := q.WriterStats(); ws.Delays != 0 {
		t.Fatalf("a lone client's commits were delayed %d times", ws.Delays)
	}
	// 64 clients append at once, 30 times each: the first commit under load
	// is delayed at least (the pacer starts out hopeful).
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for c := 0; c < 64; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				if _, err := q.Append(ctx, &Message{Method: "POST", URI: "/", Body: []byte("many")}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ws := q.WriterStats()
	if ws.Delays == 0 {
		t.Fatalf("no commit was delayed under load (%d commits of %d requests)", ws.Commits, ws.Requests)
	}
	if ws.DelayTime < time.Duration(ws.Delays)*delay {
		t.Fatalf("%d delays took %v in all, less than %v each", ws.Delays, ws.DelayTime, delay)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, q = openTest(t, Config{Dir: dir}, "t")
	defer s.Close()
	if n := q.Appended(); n != 20+64*30 {
		t.Fatalf("after a reopen the queue holds %d messages, want %d", n, 20+64*30)
	}
}
