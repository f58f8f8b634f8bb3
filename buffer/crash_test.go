package buffer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
)

// TestCrashLosesNothingAcknowledged runs a child process that appends from 32
// goroutines with SyncAlways and prints every acknowledged id, kills it with
// SIGKILL in mid-stream, then reopens the store: every printed id must be
// there, intact, and fetchable by every target.
//
// With SyncInterval and SyncNever the acknowledgement comes before fsync, but
// after the write(2): a process crash (unlike a power loss) still loses
// nothing, and that is tested too.
func TestCrashLosesNothingAcknowledged(t *testing.T) {
	if os.Getenv("SLUICE_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	for _, mode := range []string{"always", "interval", "never"} {
		t.Run("fsync="+mode, func(t *testing.T) { crashRounds(t, mode) })
	}
}

func crashRounds(t *testing.T, mode string) {
	dir := t.TempDir()
	for round := range 3 {
		cmd, sc := testutil.Child(t, "TestCrashLosesNothingAcknowledged", "SLUICE_CRASH_CHILD=1", "SLUICE_CRASH_DIR="+dir, "SLUICE_CRASH_SYNC="+mode)
		var acked []string
		killAt := 300 + 200*round
		for sc.Scan() {
			line := sc.Text()
			if id, ok := strings.CutPrefix(line, "ACK "); ok {
				acked = append(acked, id)
			}
			if len(acked) == killAt {
				must(t, cmd.Process.Signal(syscall.SIGKILL))
				break
			}
		}
		// Ids printed after the kill decision but already in the pipe count too.
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
				acked = append(acked, id)
			}
		}
		cmd.Wait()
		if len(acked) < killAt {
			t.Fatalf("round %d: child acknowledged only %d before exiting", round, len(acked))
		}

		s, err := Open(Config{Dir: dir})
		must(t, err)
		q, err := s.Queue("orders", []string{"a", "b"})
		must(t, err)
		for _, str := range acked {
			id, err := ParseID(str)
			must(t, err)
			if _, _, err := q.Lookup(id); err != nil {
				t.Fatalf("round %d: acknowledged %s lost after SIGKILL: %v", round, str, err)
			}
		}
		must(t, s.Close())
		t.Logf("round %d: %d acknowledged ids all present after SIGKILL", round, len(acked))
	}
}

func crashChild() {
	cfg := Config{Dir: os.Getenv("SLUICE_CRASH_DIR")}
	switch os.Getenv("SLUICE_CRASH_SYNC") {
	case "interval":
		cfg.Sync = SyncInterval
	case "never":
		cfg.Sync = SyncNever
	}
	s, err := Open(cfg)
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
	var wg sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second) // the parent kills us long before
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				id, err := q.Append(context.Background(), &Message{Method: "POST", URI: fmt.Sprintf("/o/%d/%d", g, i), Body: kib})
				if err != nil {
					continue
				}
				mu.Lock()
				fmt.Fprintf(w, "ACK %s\n", id)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	os.Exit(0)
}
