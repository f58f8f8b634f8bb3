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

// TestPowerLossLosesOnlyUnsyncedOutcomes: with SyncAlways, a Delivered
// outcome is acknowledged once its journal frame is written, and
// fdatasynced within outcomeSyncMax. A power loss can take what was
// written and not yet synced; this test makes one happen. A child drains
// one target, one Complete at a time, and prints DONE for each outcome
// acknowledged; at every fsync of the queue (Config.ObserveSync, which
// runs before the synced commit is acknowledged and while the writer
// writes nothing), it copies the journal files into a directory of their
// own, synced-N, and then prints SYNCED N. The parent kills it with
// SIGKILL mid-drain, puts the journal back as it was at the last SYNCED
// (what a power loss leaves at worst), and opens the queue: every message
// whose DONE came before that SYNCED must stay delivered; the others may
// be handed out again, and every message must be one or the other. (A
// kill in the middle of a copy leaves that copy unannounced and the one
// before it whole: one directory, rewritten in place, once lost the last
// announced copy that way.)
func TestPowerLossLosesOnlyUnsyncedOutcomes(t *testing.T) {
	if os.Getenv("SLUICE_POWERLOSS_CHILD") != "" {
		powerLossChild()
		return
	}
	const total = 1200
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	for range total / 100 {
		appendN(t, q, 100)
	}
	must(t, s.Close())

	cmd, sc := testutil.Child(t, "TestPowerLossLosesOnlyUnsyncedOutcomes", "SLUICE_POWERLOSS_CHILD=1", "SLUICE_POWERLOSS_DIR="+dir)
	var pending []uint64         // DONE since the last SYNCED
	durable := map[uint64]bool{} // DONE before a SYNCED
	done, killed := 0, false
	synced := -1 // the last copy announced
	for sc.Scan() {
		var seq uint64
		var n int
		switch line := sc.Text(); {
		case strings.HasPrefix(line, "SYNCED "):
			if _, err := fmt.Sscanf(line, "SYNCED %d", &n); err != nil {
				t.Fatalf("child: %q", line)
			}
			synced = n
			for _, s := range pending {
				durable[s] = true
			}
			pending = pending[:0]
		default:
			if _, err := fmt.Sscanf(line, "DONE %d", &seq); err == nil {
				pending = append(pending, seq)
				if done++; done == total/3 && !killed {
					must(t, cmd.Process.Signal(syscall.SIGKILL))
					killed = true
				}
			}
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatalf("the child ended before the kill, after %d outcomes", done)
	}

	// The power loss: the journal as it was at the last fsync.
	qdir := filepath.Join(dir, "queues", "orders")
	live, _ := filepath.Glob(filepath.Join(qdir, "outcomes-*.log"))
	for _, p := range live {
		must(t, os.Remove(p))
	}
	var saved []string
	if synced >= 0 {
		saved, _ = filepath.Glob(filepath.Join(dir, fmt.Sprintf("synced-%d", synced), "outcomes-*.log"))
	}
	for _, p := range saved {
		b, err := os.ReadFile(p)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(qdir, filepath.Base(p)), b, 0o600))
	}

	s, q = openTest(t, Config{Dir: dir}, "a")
	defer s.Close()
	again := deliverAll(t, q, "a")
	for seq := range again {
		if durable[seq] {
			t.Fatalf("seq %d handed out again, yet its outcome was acknowledged before a completed fsync", seq)
		}
	}
	for seq := uint64(1); seq <= total; seq++ {
		if !durable[seq] && !again[seq] {
			if _, st, err := q.Lookup(idOf(t, q, seq)); err != nil || st[0].Phase != Delivered {
				t.Fatalf("seq %d neither delivered nor handed out again (status %v, %v)", seq, st, err)
			}
		}
	}
	t.Logf("%d outcomes acknowledged before SIGKILL, %d of them after the last fsync; %d messages handed out again",
		done, len(pending), len(again))
}

func powerLossChild() {
	dir := os.Getenv("SLUICE_POWERLOSS_DIR")
	qdir := filepath.Join(dir, "queues", "orders")
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(line string) {
		mu.Lock()
		fmt.Fprintln(w, line)
		w.Flush()
		mu.Unlock()
	}
	copies := 0
	observe := func(time.Duration) {
		// The writer is inside this fsync: the journal is what it covers.
		saved := filepath.Join(dir, fmt.Sprintf("synced-%d", copies))
		if err := os.Mkdir(saved, 0o700); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		live, _ := filepath.Glob(filepath.Join(qdir, "outcomes-*.log"))
		for _, p := range live {
			b, err := os.ReadFile(p)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			var gen uint64
			fmt.Sscanf(filepath.Base(p), "outcomes-%016x.log", &gen)
			_, end := parseJournal(b, gen) // the frames; the rest is zeros or older frames
			if err := os.WriteFile(filepath.Join(saved, filepath.Base(p)), b[:end], 0o600); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
		}
		say(fmt.Sprintf("SYNCED %d", copies))
		os.RemoveAll(filepath.Join(dir, fmt.Sprintf("synced-%d", copies-1))) // announced, so the one before is not needed
		copies++
	}
	s, err := Open(Config{Dir: dir, ObserveSync: observe})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c, _ := q.Consumer("a")
	deadline := time.Now().Add(20 * time.Second) // the parent kills us long before
	for time.Now().Before(deadline) {
		got, err := c.Fetch(16, time.Now())
		if err != nil {
			os.Exit(2)
		}
		if len(got) == 0 {
			time.Sleep(time.Millisecond)
		}
		for _, d := range got {
			out := Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}
			if err := c.Complete(context.Background(), d, out); err != nil {
				continue
			}
			say(fmt.Sprintf("DONE %d", d.Seq))
		}
	}
	os.Exit(0)
}
