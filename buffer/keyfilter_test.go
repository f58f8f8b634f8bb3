package buffer

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A filter never says no for a key it holds, says maybe for few it does not,
// survives its encoding, and an encoding that was changed is refused.
func TestKeyFilter(t *testing.T) {
	const n = 20000
	f := newKeyFilter(n)
	for i := range n {
		f.add(keyHash(fmt.Appendf(nil, "in-%d", i)))
	}
	g, err := unmarshalKeyFilter(f.marshal())
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if k := keyHash(fmt.Appendf(nil, "in-%d", i)); !f.mayContain(k) || !g.mayContain(k) {
			t.Fatalf("key %d added but not found (decoded: %v)", i, g.mayContain(k))
		}
	}
	fp := 0
	for i := range n {
		if g.mayContain(keyHash(fmt.Appendf(nil, "out-%d", i))) {
			fp++
		}
	}
	if rate := float64(fp) / n; rate > 0.03 {
		t.Fatalf("false positive rate %.3f, want under 0.03 at %d bits a key", rate, keyFilterBitsPerKey)
	}
	if newKeyFilter(0).mayContain(keyHash([]byte("x"))) {
		t.Fatal("an empty filter said maybe")
	}
	b := f.marshal()
	for _, bad := range [][]byte{nil, b[:8], append(bytes.Clone(b[:len(b)-1]), b[len(b)-1]^1), func() []byte { c := bytes.Clone(b); c[20] ^= 0x10; return c }()} {
		if _, err := unmarshalKeyFilter(bad); err == nil {
			t.Fatalf("a damaged filter of %d bytes was accepted", len(bad))
		}
	}
	t.Logf("false positives: %d of %d absent keys (%.2f%%)", fp, n, 100*float64(fp)/n)
}

func FuzzKeyFilter(f *testing.F) {
	kf := newKeyFilter(3)
	kf.add(keyHash([]byte("a")))
	f.Add(kf.marshal())
	f.Add(newKeyFilter(0).marshal())
	f.Add([]byte{1, 0, 0, 0, 8})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := unmarshalKeyFilter(b)
		if err != nil {
			return
		}
		if !bytes.Equal(g.marshal(), b) {
			t.Fatalf("decoded filter encodes differently")
		}
		g.mayContain(keyHash(b)) // must not panic
	})
}

// Every key of the sealed segments is still found, through their filters,
// after a restart; and when a segment's stored filter is damaged, start-up
// says so and its keys are found in its bbolt file instead: a damaged filter
// costs time, never a duplicate.
func TestKeyFilterSealedSegmentsAndDamage(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 64 << 10}
	s, q := openTest(t, cfg, "a")
	const n = 300
	ids := make([]ID, n)
	for i := range n {
		d := draft(fmt.Sprintf("key-%d", i), i)
		d.Body = kib
		id, err := q.AppendDraft(context.Background(), d)
		must(t, err)
		ids[i] = id
	}
	if q.Stats().Segments < 4 {
		t.Fatalf("want several sealed segments, got %d", q.Stats().Segments)
	}
	must(t, s.Close())
	damage := func() []Damage {
		t.Helper()
		rep, err := Inspect(dir, true)
		must(t, err)
		var ds []Damage
		for _, qr := range rep.Queues {
			ds = append(ds, qr.Damaged...)
		}
		return ds
	}
	if ds := damage(); len(ds) != 0 {
		t.Fatalf("inspect --verify of sound keyed segments reports damage: %+v", ds)
	}

	// Damage the stored filter of the first segment.
	segs, err := listSegments(filepath.Join(dir, "queues", "orders"))
	must(t, err)
	db, err := bolt.Open(filepath.Join(dir, "queues", "orders", segmentName(segs[0])), 0o600, nil)
	must(t, err)
	must(t, db.Update(func(tx *bolt.Tx) error {
		info := tx.Bucket(bucketInfo)
		v := bytes.Clone(info.Get(keyKeyFilter))
		if len(v) < 16 {
			return fmt.Errorf("first segment has no key filter (%d bytes)", len(v))
		}
		v[10] ^= 0xff
		return info.Put(keyKeyFilter, v)
	}))
	must(t, db.Close())

	ds := damage()
	if len(ds) != 1 || ds[0].Segment != segmentName(segs[0]) || !strings.Contains(ds[0].Err, "key filter") {
		t.Fatalf("inspect --verify after the filter of %s was damaged: %+v, want one entry naming it", segmentName(segs[0]), ds)
	}

	var logs strings.Builder
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s2, q2 := openTest(t, cfg, "a")
	defer s2.Close()
	if !strings.Contains(logs.String(), "key filter unreadable") || !strings.Contains(logs.String(), segLabel(segs[0])) {
		t.Fatalf("start-up did not report the damaged filter of %s:\n%s", segLabel(segs[0]), logs.String())
	}
	before := q2.Stats().Appended
	for i := range n {
		d := draft(fmt.Sprintf("key-%d", i), i)
		d.Body = kib
		id, err := q2.AppendDraft(context.Background(), d)
		must(t, err)
		if !d.Duplicate || id != ids[i] {
			t.Fatalf("key-%d after restart: duplicate %v id %v, want the first id %v", i, d.Duplicate, id, ids[i])
		}
	}
	if got := q2.Stats().Appended - before; got != 0 {
		t.Fatalf("%d repeated keys were stored again", got)
	}
}

// inspect --verify checks a sound-looking filter against the segment's keys:
// a filter that misses one (it would let a duplicate through) is reported,
// with the message's seq.
func TestVerifyFindsFilterMissingKeys(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
	for i := range 120 {
		d := draft(fmt.Sprintf("key-%d", i), i)
		d.Body = kib
		_, err := q.AppendDraft(context.Background(), d)
		must(t, err)
	}
	must(t, s.Close())
	qdir := filepath.Join(dir, "queues", "orders")
	segs, err := listSegments(qdir)
	must(t, err)
	db, err := bolt.Open(filepath.Join(qdir, segmentName(segs[0])), 0o600, nil)
	must(t, err)
	must(t, db.Update(func(tx *bolt.Tx) error {
		// Well formed, checksum and all, but with no bit set.
		return tx.Bucket(bucketInfo).Put(keyKeyFilter, newKeyFilter(100).marshal())
	}))
	must(t, db.Close())
	rep, err := Inspect(dir, true)
	must(t, err)
	// The segment holds segs[1]-segs[0] keyed messages, all missed: the
	// first 10 are listed with their seqs, then the count.
	keys := int(segs[1] - segs[0])
	var listed int
	var total string
	for _, qr := range rep.Queues {
		for _, d := range qr.Damaged {
			switch {
			case d.Segment != segmentName(segs[0]) || !strings.Contains(d.Err, "key filter misses"):
				t.Errorf("unexpected damage entry %+v", d)
			case d.Seq == 0:
				total = d.Err
			case d.Seq < segs[0] || d.Seq >= segs[1]:
				t.Errorf("damage entry names seq %d, outside the segment %d..%d", d.Seq, segs[0], segs[1]-1)
			default:
				listed++
			}
		}
	}
	if listed == 0 {
		t.Fatal("inspect --verify did not notice a filter that holds none of the segment's keys")
	}
	if want := fmt.Sprintf("misses %d idempotency keys", keys); keys > 10 && (listed != 10 || !strings.Contains(total, want)) {
		t.Fatalf("listed %d, summary %q; want 10 listed and %q", listed, total, want)
	}
	t.Logf("%d of %d missed keys listed; %s", listed, keys, total)
}
