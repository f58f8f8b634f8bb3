package buffer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
)

// TestCrashDuringRollAndDeletion kills, with SIGKILL, a child that appends
// into 64 KiB segments (a roll every ~50 messages) while a consumer delivers
// and admission control deletes finished segments early (max_bytes is
// small). After each kill: every acknowledged message is either still
// stored or was being delivered (the child says so before it records the
// outcome), and a restarted consumer receives every stored, undelivered one.
// Deleted segments' logs are recycled as spares (the kills land on heads
// written over them), and no message comes back from one.
func TestCrashDuringRollAndDeletion(t *testing.T) {
	if os.Getenv("SLUICE_CRASH_ROLL_CHILD") != "" {
		crashRollChild()
		return
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	delivered := map[string]bool{}
	recycled := 0
	for round := range 4 {
		cmd, sc := testutil.Child(t, "TestCrashDuringRollAndDeletion", "SLUICE_CRASH_ROLL_CHILD=1", "SLUICE_CRASH_DIR="+dir)
		n := 0
		killAt := 150 + 60*round
		for sc.Scan() {
			kind, id, _ := strings.Cut(sc.Text(), " ")
			switch kind {
			case "ACK":
				acked[id] = true
				n++
			case "DELIVERED":
				delivered[id] = true
			}
			if n == killAt {
				must(t, cmd.Process.Signal(syscall.SIGKILL))
				break
			}
		}
		for sc.Scan() {
			kind, id, _ := strings.Cut(sc.Text(), " ")
			if kind == "ACK" {
				acked[id] = true
			} else if kind == "DELIVERED" {
				delivered[id] = true
			}
		}
		cmd.Wait()
		if n < killAt {
			t.Fatalf("round %d: child acknowledged only %d", round, n)
		}

		s, err := Open(Config{Dir: dir, SegmentBytes: 64 << 10})
		must(t, err)
		q, err := s.Queue("orders", []string{"a"})
		must(t, err)
		stored := 0
		for str := range acked {
			id, _ := ParseID(str)
			if _, _, err := q.Lookup(id); err == nil {
				stored++
			} else if !delivered[str] {
				t.Fatalf("round %d: acknowledged %s neither stored nor delivered: %v", round, str, err)
			}
		}
		// Whatever is stored and not delivered is still handed out.
		a, _ := q.Consumer("a")
		pending := map[string]bool{}
		for _, d := range fetchAll(t, a) {
			pending[d.ID.String()] = true
			a.Release(d)
		}
		for str := range acked {
			id, _ := ParseID(str)
			_, st, err := q.Lookup(id)
			if err == nil && st[0].Phase != Delivered && !pending[str] && !delivered[str] {
				t.Fatalf("round %d: %s stored, undelivered, but not fetched (%+v)", round, str, st[0])
			}
		}
		// Delivered again after the restart: only what was in flight at the
		// kill, at most one Fetch of 32 a round (a message from a deleted
		// segment's recycled log would come back as a whole segment's worth).
		again := 0
		for str := range pending {
			if delivered[str] {
				again++
			}
		}
		if again > 32*(round+1) {
			t.Fatalf("round %d: %d delivered messages handed out again", round, again)
		}
		st := q.Stats()
		must(t, s.Close())
		rec := recycledHeads(t, filepath.Join(dir, "queues", "orders"))
		recycled += len(rec)
		t.Logf("round %d: %d acknowledged, %d delivered, %d still stored, %d segments (%d on recycled logs), %d handed out again", round, len(acked), len(delivered), stored, st.Segments, len(rec), again)
	}
	if recycled == 0 {
		t.Fatal("no segment took a spare log: the kills never hit a recycled head")
	}
}

func crashRollChild() {
	s, err := Open(Config{Dir: os.Getenv("SLUICE_CRASH_DIR"), SegmentBytes: 64 << 10, MaxBytes: 400 << 10, CursorInterval: 10 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(kind string, id ID) {
		mu.Lock()
		fmt.Fprintf(w, "%s %s\n", kind, id)
		w.Flush()
		mu.Unlock()
	}
	deadline := time.Now().Add(20 * time.Second) // the parent kills us long before
	go func() {                                  // the consumer: deliver everything, in batches
		a, _ := q.Consumer("a")
		for time.Now().Before(deadline) {
			ds, _ := a.Fetch(32, time.Now())
			if len(ds) == 0 {
				time.Sleep(time.Millisecond)
			}
			for _, d := range ds {
				// Said before Complete: a kill may land after the commit and
				// before any later line, and such a message may be gone with
				// its segment, legitimately.
				say("DELIVERED", d.ID)
				a.Complete(context.Background(), d, Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}})
			}
		}
	}()
	go func() {
		for time.Now().Before(deadline) {
			time.Sleep(2 * time.Second)
			if os.Getenv("SLUICE_CRASH_DEBUG") != "" {
				fmt.Fprintf(os.Stderr, "child stats: %+v bytes=%d full=%q\n", q.Stats(), s.Bytes(), s.full())
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				id, err := q.Append(context.Background(), &Message{Method: "POST", URI: fmt.Sprintf("/o/%d/%d", g, i), Body: kib})
				if err != nil {
					time.Sleep(time.Millisecond) // full: wait for the consumer to free space
					continue
				}
				say("ACK", id)
			}
		}()
	}
	wg.Wait()
	os.Exit(0)
}
