package buffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestBlockCodec(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var b block
		for i := range b {
			if rnd.IntN(3) == 0 {
				b[i] = appendState(nil, &State{Phase: Delivered, Attempts: 1,
					History: []Attempt{{N: 1, At: time.Unix(0, rnd.Int64()), Status: 200 + rnd.IntN(100)}}})
			}
		}
		v := appendBlock(nil, &b)
		var got block
		if err := decodeBlock(v, &got); err != nil {
			t.Fatal(err)
		}
		for i := range b {
			if !bytes.Equal(b[i], got[i]) || (b[i] == nil) != (got[i] == nil) {
				t.Fatalf("entry %d: got %x, want %x", i, got[i], b[i])
			}
		}
		// Every damage is refused, never half read.
		for _, bad := range [][]byte{v[:len(v)-1], append(bytes.Clone(v), 0), flip(v, rnd.IntN(len(v)))} {
			if err := decodeBlock(bad, &got); err == nil {
				t.Fatalf("damaged block decoded: %x", bad)
			}
			for i := range got {
				if got[i] != nil {
					t.Fatalf("a refused block left entry %d behind", i)
				}
			}
		}
	}
}

func flip(v []byte, i int) []byte {
	c := bytes.Clone(v)
	c[i] ^= 0x10
	return c
}

// FuzzBlockCodec: decoding never panics, and whatever decodes encodes to
// the same bytes.
func FuzzBlockCodec(f *testing.F) {
	var b block
	b[0] = appendState(nil, &State{Phase: Delivered, Attempts: 1, History: []Attempt{{N: 1, At: time.Unix(1, 0), Status: 200}}})
	b[63] = appendState(nil, &State{Phase: Delivered, Attempts: 1, History: []Attempt{{N: 1, At: time.Unix(2, 0), Status: 204}}})
	f.Add(appendBlock(nil, &b))
	f.Add(appendBlock(nil, &block{}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		var got block
		if decodeBlock(v, &got) != nil {
			return
		}
		if re := appendBlock(nil, &got); !bytes.Equal(re, v) {
			t.Fatalf("re-encoded %x, was %x", re, v)
		}
	})
}

// deliverSome fetches every message of target and completes them all
// Delivered with status 200 but those in skip, which it gives back.
func deliverSome(t *testing.T, q *Queue, target string, skip map[uint64]bool) int {
	t.Helper()
	c, err := q.Consumer(target)
	must(t, err)
	n := 0
	for range 1000 {
		ds, err := c.Fetch(100, time.Now())
		must(t, err)
		if len(ds) == 0 {
			return n
		}
		var done []*Delivery
		var outs []Outcome
		for _, d := range ds {
			if skip[d.Seq] {
				c.Release(d)
				continue
			}
			done = append(done, d)
			outs = append(outs, Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}})
		}
		for _, err := range c.CompleteBatch(context.Background(), done, outs) {
			must(t, err)
		}
		n += len(done)
		if len(done) == 0 {
			return n
		}
	}
	t.Fatal("deliverSome did not end")
	return n
}

// dbBuckets returns, for every bucket of the segments' .db files under
// dir whose name starts with prefix, its number of keys.
func dbBuckets(t *testing.T, dir, prefix string) map[string]int {
	t.Helper()
	out := map[string]int{}
	paths, _ := filepath.Glob(filepath.Join(queueDir(dir), "seg-*.db"))
	for _, p := range paths {
		db, err := bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		must(t, err)
		db.View(func(tx *bolt.Tx) error {
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				if strings.HasPrefix(string(name), prefix) {
					out[string(name)] += b.Stats().KeyN
				}
				return nil
			})
		})
		db.Close()
	}
	return out
}

// TestCheckpointPacksOutcomes: a checkpoint writes delivered outcomes as
// blocks of 64 seqs, not one record each, and everything that reads
// states reads them there: a restart fetches none of them again, Lookup
// and the listing show them delivered with their status, and a replay
// (a per-seq record) takes precedence over the block, across restarts.
func TestCheckpointPacksOutcomes(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	ids := appendN(t, q, 300)
	if n := deliverSome(t, q, "a", map[uint64]bool{7: true, 200: true}); n != 298 {
		t.Fatalf("delivered %d, want 298", n)
	}
	must(t, s.Close()) // checkpoints

	if got := dbBuckets(t, dir, "s/"); got["s/a"] != 0 {
		t.Fatalf("per-seq state records after a checkpoint of first deliveries: %v", got)
	}
	if got := dbBuckets(t, dir, "b/"); got["b/a"] < 5 || got["b/a"] > 6 {
		t.Fatalf("delivered blocks: %v, want 5 or 6 for 300 seqs", got)
	}

	s, q = openTest(t, Config{Dir: dir}, "a")
	defer func() { s.Close() }()
	c, _ := q.Consumer("a")
	ds, err := c.Fetch(1000, time.Now())
	must(t, err)
	if len(ds) != 2 || ds[0].Seq != 7 || ds[1].Seq != 200 {
		t.Fatalf("after restart fetched %d messages, want seqs 7 and 200 only", len(ds))
	}
	for _, d := range ds {
		c.Release(d)
	}
	_, st, err := q.Lookup(ids[9])
	must(t, err)
	if st[0].Phase != Delivered || st[0].Attempts != 1 || len(st[0].History) != 1 || st[0].History[0].Status != 200 {
		t.Fatalf("Lookup of a packed outcome: %+v", st[0])
	}
	counts, err := q.Counts("a", time.Time{}, time.Time{})
	must(t, err)
	if counts.Delivered != 298 || counts.Queued != 2 {
		t.Fatalf("counts %+v, want 298 delivered, 2 queued", counts)
	}

	// A replay writes a per-seq record: it wins over the block.
	seq := ids[9].Seq()
	must(t, q.Replay(context.Background(), "a", seq, time.Now()))
	checkReplayed := func() {
		t.Helper()
		_, st, err := q.Lookup(ids[9])
		must(t, err)
		if st[0].Phase == Delivered {
			t.Fatalf("replayed message still reads delivered: %+v", st[0])
		}
	}
	checkReplayed()
	must(t, s.Close())
	s, q = openTest(t, Config{Dir: dir}, "a")
	checkReplayed()
	c, _ = q.Consumer("a")
	var seqs []uint64
	for range 10 {
		ds, err := c.Fetch(1000, time.Now().Add(time.Hour))
		must(t, err)
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			seqs = append(seqs, d.Seq)
			c.Release(d)
		}
		break
	}
	want := map[uint64]bool{7: true, 200: true, seq: true}
	if len(seqs) != 3 || !want[seqs[0]] || !want[seqs[1]] || !want[seqs[2]] {
		t.Fatalf("after replay and restart fetched %v, want %v", seqs, want)
	}
}

// TestDamagedBlockDeliversAgain breaks one delivered block on disk, above
// the target's floor (seq 3 is left undelivered): its messages are read as
// not delivered, so they are delivered again (a duplicate, never a loss);
// the other blocks are untouched, and Inspect reports the damage.
func TestDamagedBlockDeliversAgain(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir}, "a")
	appendN(t, q, 256)
	deliverSome(t, q, "a", map[uint64]bool{3: true})
	must(t, s.Close())

	paths, _ := filepath.Glob(filepath.Join(queueDir(dir), "seg-*.db"))
	if len(paths) != 1 {
		t.Fatalf("%d segments, want 1", len(paths))
	}
	db, err := bolt.Open(paths[0], 0o600, &bolt.Options{Timeout: time.Second})
	must(t, err)
	var first uint64
	must(t, db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(blockBucket("a"))
		k, v := b.Cursor().Seek(seqKey(64))
		first = blockFirst(binary.BigEndian.Uint64(k))
		return b.Put(k, flip(v, len(v)/2))
	}))
	must(t, db.Close())

	rep, err := Inspect(dir, true)
	must(t, err)
	found := false
	for _, d := range rep.Queues[0].Damaged {
		found = found || strings.Contains(d.Err, "delivered block")
	}
	if !found {
		t.Fatalf("Inspect did not report the damaged block: %+v", rep.Queues[0].Damaged)
	}

	s, q = openTest(t, Config{Dir: dir}, "a")
	defer s.Close()
	got := deliverAll(t, q, "a")
	if len(got) != blockSize+1 || !got[3] {
		t.Fatalf("delivered %d messages, want seq 3 and the %d of the damaged block", len(got), blockSize)
	}
	for seq := range got {
		if seq != 3 && blockFirst(seq) != first {
			t.Fatalf("seq %d delivered again, outside the damaged block at %d", seq, first)
		}
	}
}

// TestPendingSet: the first outcome of a seq counts, reads find what was
// added, and a checkpoint is due by outcomes or by blocks, whichever
// comes first, so that sparse outcomes cannot hold unbounded memory.
func TestPendingSet(t *testing.T) {
	s1, s2 := &segment{first: 1}, &segment{first: 1000}
	p := newPendingSet()
	p.add(s1, 0, 5, []byte("first"))
	p.add(s1, 0, 5, []byte("second"))
	p.add(s2, 1, 1000, []byte("other"))
	if got := string(p.get(s1, 0, 5)); got != "first" {
		t.Fatalf("get = %q, want the first outcome", got)
	}
	if p.get(s1, 1, 5) != nil || p.get(s2, 0, 1000) != nil || p.get(s1, 0, 6) != nil {
		t.Fatal("get found an outcome that was not added")
	}
	if p.n != 2 || p.inSegment(s1) != 1 || p.inSegment(s2) != 1 {
		t.Fatalf("n=%d, per segment %d and %d; want 2, 1, 1", p.n, p.inSegment(s1), p.inSegment(s2))
	}
	segs := p.segments()
	if len(segs) != 2 || segs[0].seg != s1 || len(segs[0].byTarget[0]) != 1 || segs[1].byTarget[1][0].first != 960 {
		t.Fatalf("segments() = %+v", segs)
	}
	p = newPendingSet()
	for i := range uint64(maxPendingBlocks) {
		if p.due() {
			t.Fatalf("due after %d sparse outcomes", i)
		}
		p.add(s1, 0, i*blockSize, []byte("x"))
	}
	if !p.due() {
		t.Fatalf("not due at %d blocks", len(p.blocks))
	}
}
