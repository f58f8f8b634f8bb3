package buffer

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// recycledHeads lists the segments of a closed queue directory whose log
// is a recycled file (keyStaleBelow set), with that bound.
func recycledHeads(t *testing.T, qdir string) map[uint64]uint64 {
	t.Helper()
	firsts, err := listSegments(qdir)
	must(t, err)
	got := map[uint64]uint64{}
	for _, first := range firsts {
		db, err := openReadOnly(filepath.Join(qdir, segmentName(first)))
		must(t, err)
		db.View(func(tx *bolt.Tx) error {
			if v := tx.Bucket(bucketInfo).Get(keyStaleBelow); len(v) == 8 {
				got[first] = binary.BigEndian.Uint64(v)
			}
			return nil
		})
		db.Close()
	}
	return got
}

// Deleted segments' logs become spares, new heads write over them, and
// nothing of what they held before comes back: after a restart the queue
// serves exactly the messages appended since, their lookups work, the old
// ones stay gone, inspect --verify finds no damage, and a sealed recycled
// log is cut to its frames.
func TestSpareLogsRecycled(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	dir := t.TempDir()
	qdir := filepath.Join(dir, "queues", "orders")
	cfg := Config{Dir: dir, SegmentBytes: 64 << 10, Retention: time.Hour, Now: clock}
	s, q := openTest(t, cfg, "a")
	for range 10 {
		appendN(t, q, 20) // 200 messages of ~1 KiB: three or four segments
	}
	a, _ := q.Consumer("a")
	deliver(t, a, fetchAll(t, a))
	old := q.Stats().Appended
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().Segments > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the writer enforces retention once a second
	}
	if q.Stats().Segments != 1 {
		t.Fatalf("segments after retention: %d", q.Stats().Segments)
	}
	paths, bounds := spares(qdir)
	if len(paths) == 0 || len(paths) > maxSpares {
		t.Fatalf("spares after deleting %d segments: %v (want 1..%d)", 3, paths, maxSpares)
	}
	for _, b := range bounds {
		if b > old+1 {
			t.Fatalf("spare bound %d above the seqs appended (%d)", b, old)
		}
	}

	// New messages roll the head onto the spares, and stop with a head on
	// a recycled log, so that the restart reads one (padded commits, then
	// the old frames).
	var ids []ID
	headRecycled := func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.segs[len(q.segs)-1].log.recycled > 0
	}
	for i := 0; !headRecycled() || len(ids) < 100; i++ {
		if i == 50 {
			t.Fatalf("%d appends, and the head is not on a recycled log", len(ids))
		}
		ids = append(ids, appendN(t, q, 10)...)
	}
	ids = append(ids, appendN(t, q, 5)...)
	must(t, s.Close())
	rec := recycledHeads(t, qdir)
	if len(rec) == 0 {
		t.Fatal("no new segment took a spare")
	}
	for first, bound := range rec {
		if bound > first {
			t.Fatalf("segment %d took a spare of bound %d", first, bound)
		}
	}

	s, q = openTest(t, cfg, "a")
	defer s.Close()
	if st := q.Stats(); st.Appended != old+uint64(len(ids)) {
		t.Fatalf("appended after restart: %d, want %d", st.Appended, old+uint64(len(ids)))
	}
	a, _ = q.Consumer("a")
	got := map[ID]bool{}
	for _, d := range fetchAll(t, a) {
		if d.Seq <= old {
			t.Fatalf("served seq %d, from before the recycling (up to %d)", d.Seq, old)
		}
		got[d.ID] = true
		a.Release(d)
	}
	for _, id := range ids {
		if !got[id] {
			t.Fatalf("message %s not served after restart", id)
		}
		if _, _, err := q.Lookup(id); err != nil {
			t.Fatalf("lookup %s: %v", id, err)
		}
	}
	if len(got) != len(ids) {
		t.Fatalf("served %d messages, appended %d", len(got), len(ids))
	}
	must(t, s.Close())

	rep, err := Inspect(dir, true)
	must(t, err)
	for _, qr := range rep.Queues {
		if len(qr.Damaged) != 0 {
			t.Fatalf("inspect --verify: %+v", qr.Damaged)
		}
		if paths, _ := spares(qdir); qr.Spares != len(paths) {
			t.Fatalf("inspect: %d spares, %d on disk", qr.Spares, len(paths))
		}
	}
	// Sealed recycled logs hold their frames and nothing else.
	s, q = openTest(t, cfg, "a")
	defer s.Close()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, seg := range q.segs {
		if seg.sealed && rec[seg.first] > 0 {
			fi, err := os.Stat(seg.log.path)
			must(t, err)
			if fi.Size() != seg.log.end {
				t.Fatalf("sealed recycled log %s: %d bytes for %d of frames", seg.log.path, fi.Size(), seg.log.end)
			}
		}
	}
}

// A spare whose bound is above the new segment's first seq could hold
// frames that pass for the new segment's own: it is deleted, never taken.
func TestSpareAboveFirstNotTaken(t *testing.T) {
	dir := t.TempDir()
	high := filepath.Join(dir, spareName(1000))
	low := filepath.Join(dir, spareName(40))
	must(t, os.WriteFile(high, []byte("old"), 0o600))
	must(t, os.WriteFile(low, []byte("old"), 0o600))
	if p, b := takeSpare(dir, 50); p != low || b != 40 {
		t.Fatalf("takeSpare = %q, %d; want %q, 40", p, b, low)
	}
	if _, err := os.Stat(high); !os.IsNotExist(err) {
		t.Fatalf("spare of bound 1000 for first 50 not deleted: %v", err)
	}
	must(t, os.Remove(low))
	if p, b := takeSpare(dir, 50); p != "" || b != 0 {
		t.Fatalf("takeSpare with none = %q, %d", p, b)
	}
}

// Commits on a recycled log are padded with zeros to a page boundary (no
// page is read before it is written), never past the file's size, and not
// at all on a new file.
func TestPadWrite(t *testing.T) {
	l := &segLog{end: 100, recycled: 3 * pageSize}
	if got := len(l.padWrite(make([]byte, 50))); got != pageSize-100 {
		t.Fatalf("padded to %d bytes, want %d", got, pageSize-100)
	}
	l.end = pageSize - 50
	if got := len(l.padWrite(make([]byte, 50))); got != 50 {
		t.Fatalf("a write ending on a boundary padded to %d", got)
	}
	l.end, l.recycled = 3*pageSize-100, 3*pageSize-20
	if got := len(l.padWrite(make([]byte, 50))); got != 50 {
		t.Fatalf("padded past the file's size: %d", got)
	}
	l.recycled, l.end = 0, 100
	if got := len(l.padWrite(make([]byte, 50))); got != 50 {
		t.Fatalf("a new file's write padded to %d", got)
	}
}

// A write that fails on a head over a spare log fails only that commit, as
// on a new file; the truncation that follows drops the old frames, so the
// head stops padding, and after a restart exactly the acknowledged
// messages are there.
func TestWriteErrorOnSpareLog(t *testing.T) {
	dir := t.TempDir()
	qdir := filepath.Join(dir, "queues", "orders")
	must(t, os.MkdirAll(qdir, 0o755))
	writeSpare(t, filepath.Join(qdir, spareName(1)), 2<<20, false)
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 8 << 20, maxFileBytes: 1 << 20}, "a")
	q.mu.Lock()
	head := q.segs[0].log
	q.mu.Unlock()
	if head.recycled < 2<<20 {
		t.Fatalf("head did not take the 2 MiB spare: recycled = %d", head.recycled)
	}
	acked := appendUntilIOError(t, q)
	must(t, s.Close())
	fi, err := os.Stat(head.path)
	must(t, err)
	if head.recycled != 0 || fi.Size() != head.end {
		t.Fatalf("after the failed write: recycled %d, file %d bytes for %d of frames", head.recycled, fi.Size(), head.end)
	}
	reopenServesAll(t, dir, len(acked))
}

// writeSpare writes a spare log of size bytes of old frames (seq 0, below
// any bound), synced, and with cold drops its pages from the page cache.
func writeSpare(b testing.TB, path string, size int64, cold bool) {
	b.Helper()
	rec := EncodeRecord(nil, &Message{Method: "POST", URI: "/old", Body: make([]byte, 1000)})
	var chunk []byte
	for len(chunk) < 1<<20 {
		chunk = appendFrame(chunk, 0, rec)
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if cold {
		dropCache(f)
	}
}
