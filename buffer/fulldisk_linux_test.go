package buffer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs of size bytes at a new directory under the
// test's temporary directory and unmounts it at cleanup. The test is skipped
// where that is not allowed (not root, or no CAP_SYS_ADMIN in a container).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v): the full-disk case is covered by TestWriteErrorFailsOnlyThatCommit's injected error", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// A real full disk: a 6 MiB tmpfs, two thirds of it taken by a filler file,
// and 16 producers appending 1 KiB messages with fsync always until the file
// system is full (ENOSPC from pwrite, or a segment that cannot be created).
// Every failed append must be refused with ErrIO or ErrFull, never
// acknowledged; every acknowledged one stays readable; once the filler is
// deleted the same store accepts again without a restart; and after a restart
// every acknowledged message is delivered once.
func TestRealFullDisk(t *testing.T) {
	dir := mountTmpfs(t, "6m")
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	cfg := Config{Dir: data, SegmentBytes: 256 << 10, CursorInterval: 20 * time.Millisecond}
	s, q := openTest(t, cfg, "a")

	var (
		mu     sync.Mutex
		acked  = map[ID]bool{}
		failed int
		ioErrs uint64 // refused with ErrIO: a commit that could not be written
		other  []error
	)
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
				id, err := q.Append(ctx, &Message{Method: "POST", URI: "/", Body: kib})
				mu.Lock()
				switch {
				case err == nil:
					acked[id] = true
				case errors.Is(err, ErrIO):
					failed++
					ioErrs++
				case errors.Is(err, ErrFull):
					failed++
				default:
					other = append(other, err)
				}
				stop := failed >= 200
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("appends on a full disk failed with %d unexpected errors, first: %v", len(other), other[0])
	}
	if failed == 0 {
		t.Fatalf("the disk never filled: %d appends acknowledged", len(acked))
	}
	if len(acked) == 0 {
		t.Fatal("nothing was acknowledged before the disk filled")
	}
	t.Logf("full disk: %d acknowledged, %d refused", len(acked), failed)
	if ws := q.WriterStats(); ws.Refused != ioErrs || (ioErrs > 0 && ws.FailedCommits == 0) {
		t.Fatalf("WriterStats counts %d refused in %d failed commits; the producers saw %d ErrIO", ws.Refused, ws.FailedCommits, ioErrs)
	}
	for id := range acked {
		if _, _, err := q.Lookup(id); err != nil {
			t.Fatalf("acknowledged %v unreadable on the full disk: %v", id, err)
		}
	}

	// Space comes back: the same store accepts again, without a restart.
	must(t, os.Remove(filler))
	var after ID
	var err error
	for i := 0; i < 100; i++ {
		if after, err = q.Append(ctx, &Message{Method: "POST", URI: "/", Body: kib}); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("append after space was freed: %v", err)
	}
	acked[after] = true
	must(t, s.Close())

	// Restart: every acknowledged message is there, once, and the rolls that
	// failed for space left no half-made segment behind to be reported as
	// damaged.
	s2, q2 := openTest(t, cfg, "a")
	defer s2.Close()
	damaged, err := filepath.Glob(filepath.Join(data, "queues", "orders", "*.damaged*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(damaged) > 0 {
		t.Fatalf("segments moved aside as damaged after a full disk: %v", damaged)
	}
	c, err := q2.Consumer("a")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[ID]bool{}
	for _, d := range fetchAll(t, c) {
		if seen[d.Message.ID] {
			t.Fatalf("%v fetched twice", d.Message.ID)
		}
		seen[d.Message.ID] = true
	}
	for id := range acked {
		if !seen[id] {
			t.Fatalf("acknowledged %v lost after the full disk and a restart (%d acknowledged, %d fetched)", id, len(acked), len(seen))
		}
	}
}
