package buffer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// A truncated state file and one with garbage written over its middle: the
// store still opens, nothing panics, Inspect with verify names the damage,
// and the state files are rebuilt from the intact logs.
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
	// The damaged state files are rebuilt from their intact logs: every
	// message is served (again), none is lost.
	if len(got) != 300 {
		t.Fatalf("served %d messages; want all 300 (the logs are intact)", len(got))
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

// deliverAll fetches and completes every message the consumer of target
// has, and returns their seqs.
func deliverAll(t *testing.T, q *Queue, target string) map[uint64]bool {
	t.Helper()
	c, err := q.Consumer(target)
	must(t, err)
	got := map[uint64]bool{}
	for range 1000 {
		ds, err := c.Fetch(64, time.Now())
		must(t, err)
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			got[d.Seq] = true
			must(t, c.Complete(context.Background(), d, Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}))
		}
	}
	return got
}

func queueDir(dir string) string { return filepath.Join(dir, "queues", "orders") }

func headFiles(t *testing.T, dir string) (db, log string) {
	t.Helper()
	dbs, _ := filepath.Glob(filepath.Join(queueDir(dir), "seg-*.db"))
	sort.Strings(dbs)
	if len(dbs) == 0 {
		t.Fatal("no segment")
	}
	db = dbs[len(dbs)-1]
	return db, strings.TrimSuffix(db, ".db") + ".log"
}

// Everything delivered (the floor past the head), the store stopped, then
// the head's state file deleted or zeroed, or its log's tail cut (what a
// power loss does with fsync interval or never while cursors.db survives):
// messages accepted after the restart must all be delivered. Before the
// fix a new head began below the floor and they were skipped for good.
func TestLostHeadKeepsNewMessagesDeliverable(t *testing.T) {
	for _, damage := range []string{"delete head db", "zero head db", "truncate head log"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir}
			s, q := openTest(t, cfg, "a")
			appendN(t, q, 100)
			if got := deliverAll(t, q, "a"); len(got) != 100 {
				t.Fatalf("delivered %d of 100", len(got))
			}
			must(t, s.Close())
			db, log := headFiles(t, dir)
			switch damage {
			case "delete head db":
				must(t, os.Remove(db))
			case "zero head db":
				f, err := os.OpenFile(db, os.O_RDWR, 0)
				must(t, err)
				_, err = f.WriteAt(make([]byte, 32<<10), 0)
				must(t, err)
				f.Close()
			case "truncate head log":
				fi, err := os.Stat(log)
				must(t, err)
				must(t, os.Truncate(log, fi.Size()/2))
			}
			s2, q2 := openTest(t, cfg, "a")
			defer s2.Close()
			ids := appendN(t, q2, 100)
			got := deliverAll(t, q2, "a")
			for _, id := range ids {
				if !got[id.Seq()] {
					t.Fatalf("message %d accepted after the restart was never delivered (delivered %d)", id.Seq(), len(got))
				}
				if id.Seq() <= 100 {
					t.Fatalf("a new message reused seq %d, handed out before the damage", id.Seq())
				}
			}
			if damage != "truncate head log" {
				// The head's log survived: its state file was rebuilt from
				// it and its messages are delivered again, never lost.
				for seq := uint64(1); seq <= 100; seq++ {
					if !got[seq] {
						t.Fatalf("message %d of the rebuilt head was not delivered again", seq)
					}
				}
			}
		})
	}
}

// sealedSegments writes 300 messages of ~1 KiB over several 64 KiB
// segments for target "a", closes the store and returns its directory,
// config and segment state files, oldest first.
func sealedSegments(t *testing.T) (string, Config, []string) {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 64 << 10}
	s, q := openTest(t, cfg, "a")
	for range 12 {
		appendN(t, q, 25)
	}
	must(t, s.Close())
	dbs, _ := filepath.Glob(filepath.Join(queueDir(dir), "seg-*.db"))
	sort.Strings(dbs)
	return dir, cfg, dbs
}

// A sealed segment's state file deleted while its log is intact: start-up
// must rebuild it from the log, never delete the log as a leftover. Inspect
// with verify must name the orphan log first.
func TestDeletedStateFileKeepsLog(t *testing.T) {
	dir, cfg, dbs := sealedSegments(t)
	if len(dbs) < 4 {
		t.Fatalf("want at least 4 segments, got %d", len(dbs))
	}
	must(t, os.Remove(dbs[1]))
	rep, err := Inspect(dir, true)
	must(t, err)
	named := false
	for _, d := range rep.Queues[0].Damaged {
		if d.Segment == filepath.Base(strings.TrimSuffix(dbs[1], ".db")+".log") {
			named = true
		}
	}
	if !named {
		t.Fatalf("inspect --verify did not name the log without a state file: %+v", rep.Queues[0].Damaged)
	}
	s2, q2 := openTest(t, cfg, "a")
	defer s2.Close()
	got := deliverAll(t, q2, "a")
	for seq := uint64(1); seq <= 300; seq++ {
		if !got[seq] {
			t.Fatalf("message %d not served after its segment's state file was deleted (served %d)", seq, len(got))
		}
	}
}

// An interrupted deletion (the marker is there) is finished at start-up:
// its log goes, and nothing of it is served again.
func TestInterruptedDeletionIsFinished(t *testing.T) {
	dir, cfg, dbs := sealedSegments(t)
	var first uint64
	fmt.Sscanf(filepath.Base(dbs[0]), "seg-%016x.db", &first)
	// What retireSegmentFiles leaves when a crash stops it after the bbolt file.
	must(t, os.WriteFile(filepath.Join(queueDir(dir), deletingName(first)), nil, 0o600))
	must(t, os.Remove(dbs[0]))
	s2, q2 := openTest(t, cfg, "a")
	defer s2.Close()
	for _, p := range []string{logName(first), idxName(first), deletingName(first)} {
		if _, err := os.Stat(filepath.Join(queueDir(dir), p)); !os.IsNotExist(err) {
			t.Fatalf("%s of an interrupted deletion is still there (%v)", p, err)
		}
	}
	got := deliverAll(t, q2, "a")
	if got[first] {
		t.Fatalf("message %d of a deleted segment was served", first)
	}
	if len(got) == 0 {
		t.Fatal("nothing served from the other segments")
	}
}

// One flipped byte in meta page 0 of a segment's state file (16 KiB
// pages): bbolt opens it from meta page 1, and so must the length check,
// so the segment is served, not moved aside.
func TestFlippedMetaPageZeroKeepsSegment(t *testing.T) {
	_, cfg, dbs := sealedSegments(t)
	f, err := os.OpenFile(dbs[1], os.O_RDWR, 0)
	must(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 16+20)
	must(t, err)
	b[0] ^= 0x40
	_, err = f.WriteAt(b, 16+20)
	must(t, err)
	f.Close()
	must(t, checkLength(dbs[1]))
	s2, q2 := openTest(t, cfg, "a")
	defer s2.Close()
	if _, err := os.Stat(dbs[1] + ".damaged"); err == nil {
		t.Fatal("a segment with one damaged meta page was moved aside")
	}
	if got := deliverAll(t, q2, "a"); len(got) != 300 {
		t.Fatalf("served %d of 300", len(got))
	}
}

// cursors.db with both meta pages zeroed: serve refuses it, so inspect
// --verify must report it.
func TestInspectVerifiesCursors(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	appendN(t, q, 10)
	must(t, s.Close())
	f, err := os.OpenFile(filepath.Join(queueDir(dir), "cursors.db"), os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt(make([]byte, 8<<10), 0)
	must(t, err)
	f.Close()
	rep, err := Inspect(dir, true)
	must(t, err)
	found := false
	for _, d := range rep.Queues[0].Damaged {
		found = found || d.Segment == "cursors.db"
	}
	if !found {
		t.Fatalf("inspect --verify found no damage in a cursors.db with zeroed meta pages: %+v", rep.Queues[0].Damaged)
	}
}
