package buffer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func draft(key string, i int) *Draft {
	return &Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: []byte(key), Body: []byte(fmt.Sprint(i))}
}

// The same key sent 50 times at once stores one message; every caller gets
// its id; 49 are told it was a duplicate.
func TestIdempotencyConcurrentDuplicates(t *testing.T) {
	s, q := openTest(t, Config{}, "a")
	defer s.Close()
	ids := make([]ID, 50)
	dups := make([]bool, 50)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := draft("order-42", 0) // the same request, 50 times
			id, err := q.AppendDraft(context.Background(), d)
			if err != nil {
				t.Error(err)
			}
			ids[i], dups[i] = id, d.Duplicate
		}()
	}
	wg.Wait()
	if got := q.Stats().Appended; got != 1 {
		t.Fatalf("stored %d messages for one key, want 1", got)
	}
	n := 0
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("caller %d got id %v, caller 0 got %v", i, ids[i], ids[0])
		}
		if dups[i] {
			n++
		}
	}
	if n != 49 {
		t.Fatalf("%d callers told duplicate, want 49", n)
	}
	if _, _, err := q.Lookup(ids[0]); err != nil {
		t.Fatalf("the one message: %v", err)
	}
}

// Keys are found across segments and after a restart; other keys and
// keyless messages are unaffected.
func TestIdempotencyAcrossSegmentsAndRestart(t *testing.T) {
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
	first, err := q.AppendDraft(context.Background(), draft("k-first", 0))
	must(t, err)
	for i := range 200 { // roll several segments, with other keys
		d := draft(fmt.Sprintf("k-%d", i), i)
		d.Body = kib
		_, err := q.AppendDraft(context.Background(), d)
		must(t, err)
	}
	if q.Stats().Segments < 3 {
		t.Fatalf("want several segments, got %d", q.Stats().Segments)
	}
	must(t, s.Close())
	s2, q2 := openTest(t, Config{Dir: dir, SegmentBytes: 64 << 10}, "a")
	defer s2.Close()
	before := q2.Stats().Appended
	d := draft("k-first", 0)
	id, err := q2.AppendDraft(context.Background(), d)
	must(t, err)
	if id != first || !d.Duplicate {
		t.Fatalf("after restart: id %v dup %v, want %v true", id, d.Duplicate, first)
	}
	d = draft("k-new", 2)
	if _, err := q2.AppendDraft(context.Background(), d); err != nil || d.Duplicate {
		t.Fatalf("a new key: dup %v err %v", d.Duplicate, err)
	}
	d = draft("", 3)
	if _, err := q2.AppendDraft(context.Background(), d); err != nil || d.Duplicate {
		t.Fatalf("no key: dup %v err %v", d.Duplicate, err)
	}
	if got := q2.Stats().Appended - before; got != 2 {
		t.Fatalf("stored %d, want 2", got)
	}
}

// A key reused with another request is refused (ErrKeyMismatch) whether the
// first message is in the head or a sealed segment, after a restart, and
// after the sealed segment's .db was lost and rebuilt from its log; nothing
// is stored for it. A segment sealed before fingerprints were kept (16-byte
// values in bucket "k") still deduplicates, and cannot tell requests apart.
func TestKeyMismatchRestartRebuildAndOldFormat(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 64 << 10}
	s, q := openTest(t, cfg, "a")
	ctx := context.Background()
	sealed, err := q.AppendDraft(ctx, draft("k-sealed", 0))
	must(t, err)
	for i := range 100 { // roll past the first segment
		d := draft(fmt.Sprintf("k-%d", i), i)
		d.Body = kib
		_, err := q.AppendDraft(ctx, d)
		must(t, err)
	}
	head, err := q.AppendDraft(ctx, draft("k-head", 0))
	must(t, err)
	if q.Stats().Segments < 2 {
		t.Fatalf("want a sealed segment, got %d segments", q.Stats().Segments)
	}
	check := func(q *Queue, when string, mismatch bool) {
		t.Helper()
		before := q.Stats().Appended
		for key, first := range map[string]ID{"k-sealed": sealed, "k-head": head} {
			d := draft(key, 0)
			if id, err := q.AppendDraft(ctx, d); err != nil || !d.Duplicate || id != first {
				t.Fatalf("%s: %s, the same request: id %v dup %v err %v, want %v", when, key, id, d.Duplicate, err, first)
			}
			d = draft(key, 1) // another body
			_, err := q.AppendDraft(ctx, d)
			if mismatch && !errors.Is(err, ErrKeyMismatch) {
				t.Fatalf("%s: %s with another body: dup %v err %v, want ErrKeyMismatch", when, key, d.Duplicate, err)
			}
			if !mismatch && key == "k-sealed" && (err != nil || !d.Duplicate) {
				t.Fatalf("%s: %s with another body: dup %v err %v, want a duplicate (no fingerprint kept)", when, key, d.Duplicate, err)
			}
		}
		if got := q.Stats().Appended; got != before {
			t.Fatalf("%s: %d messages stored for repeated keys", when, got-before)
		}
	}
	check(q, "running", true)
	must(t, s.Close())

	s, q = openTest(t, cfg, "a")
	check(q, "after restart", true)
	must(t, s.Close())

	qdir := filepath.Join(dir, "queues", "orders")
	segs, err := listSegments(qdir)
	must(t, err)
	must(t, os.Remove(filepath.Join(qdir, segmentName(segs[0]))))
	s, q = openTest(t, cfg, "a")
	check(q, "after the sealed segment's .db was rebuilt", true)
	must(t, s.Close())

	// Rewrite the first segment's keys as a version without fingerprints
	// wrote them: seq and tag only.
	db, err := bolt.Open(filepath.Join(qdir, segmentName(segs[0])), 0o600, nil)
	must(t, err)
	must(t, db.Update(func(tx *bolt.Tx) error {
		kb := tx.Bucket(bucketKeys)
		if kb == nil {
			return errors.New("the rebuilt segment has no keys")
		}
		old := map[string][]byte{}
		if err := kb.ForEach(func(k, v []byte) error {
			if len(v) != 32 {
				return fmt.Errorf("key value of %d bytes, want 32", len(v))
			}
			old[string(k)] = bytes.Clone(v[:16])
			return nil
		}); err != nil {
			return err
		}
		for k, v := range old {
			if err := kb.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}))
	must(t, db.Close())
	s, q = openTest(t, cfg, "a")
	defer s.Close()
	check(q, "with keys of the previous format", false)
}
