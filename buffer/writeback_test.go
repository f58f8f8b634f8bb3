package buffer

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// With SyncNever the writer starts the kernel's writeback of what it
// appended (no fsync), within a sync interval, and once per new data only;
// what was acknowledged is there after a reopen.
func TestNeverStartsWriteback(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("sync_file_range is Linux only; elsewhere SyncNever leaves it all to the OS")
	}
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, Sync: SyncNever}, "t")
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		if _, err := q.Append(ctx, &Message{Method: "POST", URI: "/", Body: make([]byte, 1024)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.writebacks.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no writeback started within 5s of the appends")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A tick during the appends started the writeback of some of them;
	// the next one (within an interval) starts the rest. After that,
	// nothing new: no more writeback starts (wait 10 intervals).
	time.Sleep(2 * q.cfg.SyncInterval)
	n := q.writebacks.Load()
	time.Sleep(10 * q.cfg.SyncInterval)
	if got := q.writebacks.Load(); got != n {
		t.Fatalf("%d writeback starts with nothing new appended", got-n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, q = openTest(t, Config{Dir: dir}, "t")
	defer s.Close()
	if got := q.Appended(); got != 100 {
		t.Fatalf("after a reopen the queue holds %d messages, want 100", got)
	}
}
