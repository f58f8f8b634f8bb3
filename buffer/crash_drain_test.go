package buffer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/store"
)

// TestCrashDuringDrainRecordsOutcomes runs a child process that drains two
// targets at full speed with SyncAlways (2% of first attempts fail and are
// retried at once, through the retry schedule and bbolt; the rest are
// Delivered, through the outcome journal) and prints every outcome that
// Complete acknowledged. The parent kills it with SIGKILL mid-drain, four
// times, then drains what is left in-process. A Delivered outcome that
// Complete acknowledged is durable: its message must never be handed out
// again. Every message must be delivered to both targets in the end.
func TestCrashDuringDrainRecordsOutcomes(t *testing.T) {
	if os.Getenv("SLUICE_DRAIN_CHILD") != "" {
		drainChild()
		return
	}
	const total = 3000
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 256 << 10}, "a", "b")
	for range total / 100 {
		appendN(t, q, 100)
	}
	must(t, s.Close())

	done := map[string]map[uint64]bool{"a": {}, "b": {}}
	again := 0 // messages handed out again whose outcome had not been acknowledged
	for round := range 4 {
		cmd, sc := testutil.Child(t, "TestCrashDuringDrainRecordsOutcomes", "SLUICE_DRAIN_CHILD=1", "SLUICE_DRAIN_DIR="+dir)
		n := 0
		killed := false
		handle := func(line string) {
			var target string
			var seq uint64
			if _, err := fmt.Sscanf(line, "DONE %s %d", &target, &seq); err == nil {
				if done[target][seq] {
					t.Fatalf("round %d: %s seq %d handed out again after its Delivered outcome was acknowledged", round, target, seq)
				}
				done[target][seq] = true
				n++
			}
			if _, err := fmt.Sscanf(line, "FETCH %s %d", &target, &seq); err == nil && done[target][seq] {
				t.Fatalf("round %d: %s seq %d fetched again after its Delivered outcome was acknowledged", round, target, seq)
			}
		}
		for sc.Scan() {
			handle(sc.Text())
			if !killed && n >= 400 {
				must(t, cmd.Process.Signal(syscall.SIGKILL))
				killed = true
			}
		}
		cmd.Wait()
		if !killed {
			t.Fatalf("round %d: the child ended before the kill, after %d outcomes", round, n)
		}
		t.Logf("round %d: %d outcomes acknowledged before SIGKILL", round, n)
	}

	s, q = openTest(t, Config{Dir: dir, SegmentBytes: 256 << 10}, "a", "b")
	defer s.Close()
	for _, target := range []string{"a", "b"} {
		got := deliverAll(t, q, target)
		for seq := range got {
			if done[target][seq] {
				t.Fatalf("%s seq %d delivered again after its Delivered outcome was acknowledged", target, seq)
			}
			again++
			done[target][seq] = true
		}
		for seq := uint64(1); seq <= total; seq++ {
			if !done[target][seq] {
				if _, st, err := q.Lookup(idOf(t, q, seq)); err != nil || st[targetIndex(target)].Phase != Delivered {
					t.Fatalf("%s seq %d never delivered (status %v, %v)", target, seq, st, err)
				}
			}
		}
	}
	t.Logf("%d deliveries left for the final drain", again)
}

func targetIndex(t string) int {
	if t == "a" {
		return 0
	}
	return 1
}

// idOf finds the id of seq (its tag is random) by reading its record.
func idOf(t *testing.T, q *Queue, seq uint64) ID {
	t.Helper()
	q.mu.Lock()
	seg := q.segmentFor(seq)
	q.mu.Unlock()
	if seg == nil {
		t.Fatalf("seq %d: no segment", seq)
	}
	v, err := seg.log.read(seq, nil)
	must(t, err)
	m, err := DecodeRecord(v)
	must(t, err)
	return store.NewID(seq, m.ID.Tag())
}

func drainChild() {
	s, err := Open(Config{Dir: os.Getenv("SLUICE_DRAIN_DIR"), SegmentBytes: 256 << 10})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	q, err := s.Queue("orders", []string{"a", "b"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(w, format, args...)
		w.Flush()
		mu.Unlock()
	}
	deadline := time.Now().Add(20 * time.Second) // the parent kills us long before
	var wg sync.WaitGroup
	for _, target := range []string{"a", "b"} {
		c, _ := q.Consumer(target)
		ds := make(chan *Delivery, 64)
		for range 16 { // concurrent Completes share commits
			wg.Go(func() {
				for d := range ds {
					out := Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}
					if d.Attempt == 1 && d.Seq%50 == 0 {
						out = Outcome{Phase: Retrying, NextTry: time.Now(), Attempt: Attempt{At: time.Now(), Status: 503}}
					}
					if err := c.Complete(context.Background(), d, out); err != nil {
						continue
					}
					if out.Phase == Delivered {
						say("DONE %s %d\n", target, d.Seq)
					}
				}
			})
		}
		wg.Go(func() {
			defer close(ds)
			for time.Now().Before(deadline) {
				got, err := c.Fetch(32, time.Now())
				if err != nil {
					return
				}
				if len(got) == 0 {
					time.Sleep(time.Millisecond)
				}
				for _, d := range got {
					say("FETCH %s %d\n", target, d.Seq)
					ds <- d
				}
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}
