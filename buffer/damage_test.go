package buffer

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// A truncated segment and a segment with garbage written over its middle:
// the store still opens, the healthy segments are served, nothing panics,
// and Inspect with verify names the damage.
func TestDamagedSegmentFiles(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
	for range 12 {
		appendN(t, q, 25) // 300 messages of ~1 KiB over several segments
	}
	must(t, s.Close())
	files, _ := filepath.Glob(filepath.Join(dir, "queues", "orders", "seg-*.db"))
	sort.Strings(files)
	if len(files) < 4 {
		t.Fatalf("want at least 4 segments, got %d", len(files))
	}
	// Truncate the second segment to a quarter; scribble over the third's middle.
	fi, _ := os.Stat(files[1])
	must(t, os.Truncate(files[1], fi.Size()/4))
	f, err := os.OpenFile(files[2], os.O_RDWR, 0)
	must(t, err)
	fi, _ = os.Stat(files[2])
	// Everything but the two meta pages at the front.
	junk := make([]byte, fi.Size()-32<<10)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	_, err = f.WriteAt(junk, 32<<10)
	must(t, err)
	f.Close()

	rep, err := Inspect(dir, true)
	must(t, err)
	qr := rep.Queues[0]
	damagedSegs := map[string]bool{}
	for _, d := range qr.Damaged {
		damagedSegs[d.Segment] = true
	}
	if !damagedSegs[filepath.Base(files[1])] || !damagedSegs[filepath.Base(files[2])] {
		t.Fatalf("inspect --verify did not name both damaged segments: %+v", qr.Damaged)
	}
	if damagedSegs[filepath.Base(files[0])] {
		t.Fatalf("inspect reported a healthy segment as damaged: %+v", qr.Damaged)
	}

	// The store opens and serves what is healthy.
	s2, q2 := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
	defer s2.Close()
	got := servedSeqs(t, q2, "a")
	// Every message of the first (healthy) segment is served.
	var second uint64
	fmt.Sscanf(filepath.Base(files[1]), "seg-%016x.db", &second)
	for seq := uint64(1); seq < second; seq++ {
		if !got[seq] {
			t.Fatalf("healthy message %d of the first segment not served (got %d messages)", seq, len(got))
		}
	}
	if len(got) == 0 || len(got) >= 300 {
		t.Fatalf("served %d messages; want the healthy ones only", len(got))
	}
	rep, err = Inspect(dir, false)
	if err == nil {
		t.Fatal("Inspect ran on a directory a store holds open")
	}
	if _, err := os.Stat(files[1] + ".damaged"); err != nil {
		t.Fatalf("truncated segment not moved aside: %v", err)
	}
	t.Logf("served %d healthy messages; damage reported: %d entries; stats %+v", len(got), len(qr.Damaged), q2.Stats())
}
