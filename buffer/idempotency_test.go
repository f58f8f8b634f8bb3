package buffer

import (
	"context"
	"fmt"
	"sync"
	"testing"
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
			d := draft("order-42", i)
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
	d := draft("k-first", 1)
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
