package buffer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// servedSeqs drains consumer name of q and returns the seqs delivered. Every
// message the damage tests write is a POST whose body ends in kib; a
// delivery that is not is damage served as data, and fails the test.
func servedSeqs(t *testing.T, q *Queue, name string) map[uint64]bool {
	t.Helper()
	c, err := q.Consumer(name)
	must(t, err)
	got := map[uint64]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ds, err := c.Fetch(64, time.Now())
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			if m := d.Message; m.Method != "POST" || !strings.HasPrefix(m.URI, "/") || !bytes.HasSuffix(m.Body, kib) {
				t.Fatalf("seq %d delivered damaged: %s %q, body of %d bytes", d.Seq, m.Method, m.URI, len(m.Body))
			}
			got[d.Seq] = true
		}
	}
	return got
}

// Damage to the log files themselves: a bit flipped in a sealed segment's
// frame, a sealed segment's index deleted, and the head's log torn in the
// middle of its last frame (what a crash during write(2) leaves).
// inspect --verify names the damaged record; start-up rebuilds the index,
// cuts the torn frame off with a warning, and every other message is served.
func TestDamagedLogFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 64 << 10}
	s, q := openTest(t, cfg, "a")
	total := 0
	for range 12 {
		appendN(t, q, 25)
		total += 25
	}
	must(t, s.Close())
	// Where the last roll falls depends on how appends batch: the head may
	// be empty. Reopen with room to spare so the head holds the next five.
	cfg.SegmentBytes = 1 << 20
	s, q = openTest(t, cfg, "a")
	for i := range 5 {
		_, err := q.Append(t.Context(), &Message{Method: "POST", URI: fmt.Sprintf("/head?i=%d", i), Body: kib})
		must(t, err)
		total++
	}
	must(t, s.Close())
	qdir := filepath.Join(dir, "queues", "orders")
	logs, _ := filepath.Glob(filepath.Join(qdir, "seg-*.log"))
	sort.Strings(logs)
	if len(logs) < 4 {
		t.Fatalf("want at least 4 segments, got %d", len(logs))
	}

	// Sizes on disk count the logs, which hold the payloads.
	rep0, err := Inspect(dir, false)
	must(t, err)
	segFiles, _ := filepath.Glob(filepath.Join(qdir, "seg-*"))
	var onDisk int64
	for _, f := range segFiles {
		onDisk += allocated(f)
	}
	if rep0.Queues[0].Bytes != onDisk {
		t.Fatalf("inspect counts %d bytes for the segments; their files take %d", rep0.Queues[0].Bytes, onDisk)
	}

	// 1. Flip a bit in the record of the 3rd frame of the second segment.
	sc, err := scanLog(logs[1], firstOf(t, logs[1]), 0, false)
	must(t, err)
	flipped := firstOf(t, logs[1]) + 2
	loc := sc.locs[2]
	flipByte(t, logs[1], int64(loc.off)+frameHeader+int64(loc.n)/2)

	// 2. Lose the third segment's index.
	must(t, os.Remove(filepath.Join(qdir, idxName(firstOf(t, logs[2])))))

	// 3. Tear the head's last frame: cut it in the middle.
	head := logs[len(logs)-1]
	hs, err := scanLog(head, firstOf(t, head), 0, false)
	must(t, err)
	if len(hs.locs) < 2 {
		t.Fatalf("head holds %d messages; want at least 2", len(hs.locs))
	}
	lastSeq := firstOf(t, head) + uint64(len(hs.locs)) - 1
	lastLoc := hs.locs[len(hs.locs)-1]
	must(t, os.Truncate(head, int64(lastLoc.off)+frameHeader+int64(lastLoc.n)/2))

	rep, err := Inspect(dir, true)
	must(t, err)
	var sawFlip, sawTail bool
	for _, d := range rep.Queues[0].Damaged {
		t.Logf("damage: %+v", d)
		// A log's damage names the .log file, not the segment's .db.
		if d.Seq == flipped && strings.HasSuffix(d.Segment, ".log") {
			sawFlip = true
		}
		if d.Seq == lastSeq && strings.HasSuffix(d.Segment, ".log") {
			sawTail = true
		}
	}
	if !sawFlip || !sawTail {
		t.Fatalf("inspect --verify missed damage (flipped seq %d: %v, torn seq %d: %v): %+v", flipped, sawFlip, lastSeq, sawTail, rep.Queues[0].Damaged)
	}

	s2, q2 := openTest(t, cfg, "a")
	defer s2.Close()
	got := servedSeqs(t, q2, "a")
	for seq := uint64(1); seq <= uint64(total); seq++ {
		want := seq != flipped && seq != lastSeq
		if got[seq] != want {
			t.Fatalf("seq %d served=%v, want %v (served %d of %d)", seq, got[seq], want, len(got), total)
		}
	}
	if _, err := os.Stat(filepath.Join(qdir, idxName(firstOf(t, logs[2])))); err != nil {
		t.Fatalf("lost index not rebuilt: %v", err)
	}
	// The torn tail is gone: a new append lands after the last whole frame
	// and is served.
	id, err := q2.Append(t.Context(), &Message{Method: "POST", URI: "/after"})
	must(t, err)
	if _, _, err := q2.Lookup(id); err != nil {
		t.Fatalf("append after cutting the torn tail: %v", err)
	}
}

func firstOf(t *testing.T, logPath string) uint64 {
	t.Helper()
	b := filepath.Base(logPath)
	first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(b, "seg-"), ".log"), 16, 64)
	if err != nil {
		t.Fatalf("bad log name %s: %v", b, err)
	}
	return first
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	var b [1]byte
	_, err = f.ReadAt(b[:], at)
	must(t, err)
	b[0] ^= 0x10
	_, err = f.WriteAt(b[:], at)
	must(t, err)
}

// FuzzScanLog: scanning an arbitrary log file never panics, never reports
// a frame past the end of the file, and every frame it accepts is whole
// (header and record checksums hold, seqs increase from first).
func FuzzScanLog(f *testing.F) {
	var good []byte
	for i := range 3 {
		good = appendFrame(good, 1+uint64(i), EncodeRecord(nil, &Message{Method: "POST", URI: "/o", Body: []byte{byte(i)}, IdempotencyKey: "k"}))
	}
	f.Add(good)
	f.Add(good[:len(good)-7])
	bad := append([]byte(nil), good...)
	bad[len(good)/2] ^= 1
	f.Add(bad)
	f.Add([]byte{})
	// A recycled file: frames 5 and 6 written over frames 1..3 of before,
	// whole and torn.
	recycled := recycledLog(f, 5, 2, 1, 3)
	f.Add(recycled)
	f.Add(recycled[:len(recycled)-5])
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "seg.log")
		must(t, os.WriteFile(path, data, 0o600))
		// As a fresh log (first 1), and as a recycled one (first 5, old
		// frames below 4).
		for _, c := range []struct{ first, staleBelow uint64 }{{1, 0}, {5, 4}} {
			sc, err := scanLog(path, c.first, c.staleBelow, true)
			if err != nil {
				t.Fatal(err)
			}
			size := int64(len(data))
			if sc.end > size || sc.end < 0 || sc.tail < 0 || sc.stale < 0 || sc.end+sc.tail+sc.stale != size {
				t.Fatalf("end %d tail %d stale %d size %d", sc.end, sc.tail, sc.stale, size)
			}
			if c.staleBelow == 0 && sc.stale != 0 {
				t.Fatalf("stale %d in a log that was not recycled", sc.stale)
			}
			for i, l := range sc.locs {
				if l.off == missing {
					continue
				}
				fr := data[l.off:]
				n, seq, ok := parseFrameHeader(fr)
				if !ok || seq != c.first+uint64(i) || n != l.n || int64(l.off)+frameHeader+int64(n) > sc.end {
					t.Fatalf("loc %d (%+v) is not a whole frame of seq %d", i, l, c.first+uint64(i))
				}
				if !recordSound(fr[frameHeader : frameHeader+n]) {
					t.Fatalf("loc %d accepted with a bad record checksum", i)
				}
			}
			if len(sc.locs) > 0 && sc.locs[len(sc.locs)-1].off == missing {
				t.Fatal("scan ends with a missing seq")
			}
		}
	})
}

// recycledLog returns a log file as a recycled one looks: frames of seqs
// first..first+n-1 written over frames oldFirst..oldFirst+oldN-1 of before
// (the old ones a little larger, so that the new end falls inside an old
// frame).
func recycledLog(t testing.TB, first uint64, n int, oldFirst uint64, oldN int) []byte {
	t.Helper()
	var old, cur []byte
	for i := range oldN {
		old = appendFrame(old, oldFirst+uint64(i), EncodeRecord(nil, &Message{Method: "POST", URI: "/old", Body: make([]byte, 100+i)}))
	}
	for i := range n {
		cur = appendFrame(cur, first+uint64(i), EncodeRecord(nil, &Message{Method: "POST", URI: "/new", Body: []byte{byte(i)}}))
	}
	if len(cur) > len(old) {
		return cur
	}
	return append(cur, old[len(cur):]...)
}

// A recycled log (a spare taken over by a new head) ends at its first old
// frame: the old frames are stale, not damage, and never served. Damage
// inside the new frames is still reported and skipped, with the frames
// after it kept, and a torn new frame is a tail before the stale bytes.
func TestScanRecycledLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seg.log")
	data := recycledLog(t, 100, 5, 10, 40)
	must(t, os.WriteFile(path, data, 0o600))
	var newEnd int64 // just past the 5 new frames
	for range 5 {
		n, _, _ := parseFrameHeader(data[newEnd:])
		newEnd += frameHeader + int64(n)
	}

	sc, err := scanLog(path, 100, 50, true)
	must(t, err)
	if len(sc.locs) != 5 || sc.end != newEnd || sc.tail != 0 || sc.stale != int64(len(data))-newEnd || len(sc.damaged) != 0 {
		t.Fatalf("recycled: %d locs, end %d (want %d), tail %d, stale %d, damage %v", len(sc.locs), sc.end, newEnd, sc.tail, sc.stale, sc.damaged)
	}
	// The same bytes read as a log that was not recycled: the old frames
	// are neither served nor taken for stale.
	sc, err = scanLog(path, 100, 0, true)
	must(t, err)
	if len(sc.locs) != 5 || sc.stale != 0 || sc.tail != int64(len(data))-newEnd {
		t.Fatalf("not recycled: %d locs, tail %d, stale %d", len(sc.locs), sc.tail, sc.stale)
	}

	// Damage in the second new frame: reported, the three after it kept.
	bad := append([]byte(nil), data...)
	n0, _, _ := parseFrameHeader(bad)
	bad[frameHeader+int(n0)+frameHeader+1] ^= 0xff
	must(t, os.WriteFile(path, bad, 0o600))
	sc, err = scanLog(path, 100, 50, true)
	must(t, err)
	if len(sc.locs) != 5 || sc.locs[1].off != missing || sc.locs[4].off == missing || len(sc.damaged) != 1 || sc.end != newEnd || sc.tail != 0 {
		t.Fatalf("damaged: locs %+v, damage %v, end %d, tail %d", sc.locs, sc.damaged, sc.end, sc.tail)
	}

	// The last new frame torn (its tail bytes still the old file's): a
	// tail of that frame's length, then the stale bytes.
	torn := append([]byte(nil), data...)
	torn[newEnd-3] ^= 0xff
	must(t, os.WriteFile(path, torn, 0o600))
	sc, err = scanLog(path, 100, 50, true)
	must(t, err)
	if len(sc.locs) != 4 || sc.tail <= 0 || sc.stale <= 0 || sc.end+sc.tail+sc.stale != int64(len(torn)) {
		t.Fatalf("torn: %d locs, end %d, tail %d, stale %d", len(sc.locs), sc.end, sc.tail, sc.stale)
	}
}

// A segment of the older format (messages inside bbolt, bucket "m") is
// refused with an error that says so, and is neither moved nor changed.
func TestOldFormatRefused(t *testing.T) {
	dir := t.TempDir()
	qdir := filepath.Join(dir, "queues", "orders")
	must(t, os.MkdirAll(qdir, 0o755))
	path := filepath.Join(qdir, segmentName(1))
	db, err := bolt.Open(path, 0o600, nil)
	must(t, err)
	must(t, db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucket(bucketOldRecords)
		if err != nil {
			return err
		}
		if err := m.Put(seqKey(1), EncodeRecord(nil, &Message{Method: "POST", URI: "/o"})); err != nil {
			return err
		}
		info, err := tx.CreateBucket(bucketInfo)
		if err != nil {
			return err
		}
		return info.Put(keyFirst, seqKey(1))
	}))
	must(t, db.Close())
	before, err := os.ReadFile(path)
	must(t, err)

	s, err := Open(Config{Dir: dir})
	must(t, err)
	defer s.Close()
	_, err = s.Queue("orders", []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "older format") || !strings.Contains(err.Error(), path) {
		t.Fatalf("opening an old-format segment: err = %v, want one naming the file and the older format", err)
	}
	after, err := os.ReadFile(path)
	must(t, err)
	if !bytes.Equal(before, after) {
		t.Fatal("the old-format segment was changed")
	}
	if _, err := os.Stat(filepath.Join(qdir, logName(1))); !os.IsNotExist(err) {
		t.Fatalf("a log file was created beside the old segment: %v", err)
	}
}

// readSpan returns, for every seq of the span, the record read returns,
// on the head and on a sealed segment.
func TestReadSpanMatchesRead(t *testing.T) {
	s, q := openTest(t, Config{SegmentBytes: 64 << 10}, "a")
	defer s.Close()
	for range 6 {
		appendN(t, q, 25)
	}
	q.mu.Lock()
	segs := append([]*segment(nil), q.segs...)
	q.mu.Unlock()
	if len(segs) < 2 {
		t.Fatalf("want a sealed segment and a head, got %d segments", len(segs))
	}
	for _, seg := range []*segment{segs[0], segs[len(segs)-1]} {
		n := int(seg.log.count())
		_, recs, err := seg.log.readSpan(seg.first, n+5, nil)
		must(t, err)
		if len(recs) != n {
			t.Fatalf("segment %d: %d records for %d messages", seg.first, len(recs), n)
		}
		for i, rec := range recs {
			want, err := seg.log.read(seg.first+uint64(i), nil)
			must(t, err)
			if !bytes.Equal(rec, want) {
				t.Fatalf("segment %d seq %d: readSpan and read differ", seg.first, seg.first+uint64(i))
			}
		}
	}
}

// The head's index in blocks reads as the slice it replaces, across block
// boundaries, whatever the sizes appended at once.
func TestLocList(t *testing.T) {
	var want []recLoc
	l := newLocList(nil)
	for i, k := 0, 1; len(want) < 3*locBlock+17; i, k = i+1, k*3%1000+1 {
		add := make([]recLoc, k)
		for j := range add {
			add[j] = recLoc{off: uint64(len(want) + j), n: uint32(i)}
		}
		l.append(add)
		want = append(want, add...)
	}
	if l.n != uint64(len(want)) {
		t.Fatalf("n %d, want %d", l.n, len(want))
	}
	for i, w := range want {
		if got := l.at(uint64(i)); got != w {
			t.Fatalf("at(%d) = %v, want %v", i, got, w)
		}
	}
	for _, span := range [][2]int{{0, len(want)}, {locBlock - 3, 7}, {locBlock, locBlock}, {2*locBlock - 1, locBlock + 2}, {len(want) - 5, 5}} {
		got := make([]recLoc, span[1])
		l.copyTo(got, uint64(span[0]))
		if !reflect.DeepEqual(got, want[span[0]:span[0]+span[1]]) {
			t.Fatalf("copyTo from %d, %d entries: wrong", span[0], span[1])
		}
	}
	var flat []recLoc
	for _, b := range l.blocks {
		flat = append(flat, b...)
	}
	if !reflect.DeepEqual(flat, want) {
		t.Fatal("the blocks in order are not the entries")
	}
}
