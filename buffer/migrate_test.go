package buffer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/store"
)

// untar unpacks testdata/name (a gzipped tar of a data directory) into a
// new directory.
func untar(t *testing.T, name string) string {
	return testutil.Untar(t, filepath.Join("testdata", name))
}

// A data directory written by the version before the outcome journal and
// the persisted next seq (testdata/v0-datadir.tar.gz, made by that version:
// 40 messages on targets a and b; for a, seqs 1-10 delivered, 11 retrying,
// 12 dead; b untouched) opens in place: every state reads as it was
// written, pending messages are served once, keys still deduplicate, and
// new messages continue the seqs.
func TestOpensDataDirOfPreviousFormat(t *testing.T) {
	dir := untar(t, "v0-datadir.tar.gz")
	s, q := openTest(t, Config{Dir: dir}, "a", "b")
	defer s.Close()
	for seq, want := range map[uint64]Phase{1: Delivered, 10: Delivered, 11: Retrying, 12: Dead, 13: Queued, 40: Queued} {
		_, st, err := q.Lookup(idOf(t, q, seq))
		must(t, err)
		if st[0].Phase != want || st[1].Phase != Queued {
			t.Fatalf("seq %d: a %s, b %s; want a %s, b queued", seq, st[0].Phase, st[1].Phase, want)
		}
	}
	// Seq 11's retry was due an hour after the directory was written:
	// read as of a minute before then, it is not due.
	_, st, err := q.Lookup(idOf(t, q, 11))
	must(t, err)
	asOf := st[0].NextTry.Add(-time.Minute)
	a, _ := q.Consumer("a")
	got := fetchAllAt(t, a, asOf)
	if len(got) != 28 || got[0].Seq != 13 {
		t.Fatalf("a fetched %d (first %d); want the 28 pending from 13", len(got), got[0].Seq)
	}
	b, _ := q.Consumer("b")
	if got := fetchAll(t, b); len(got) != 40 {
		t.Fatalf("b fetched %d of 40", len(got))
	}
	m6, _, err := q.Lookup(idOf(t, q, 6))
	must(t, err)
	d := &Draft{Method: []byte(m6.Method), URI: []byte(m6.URI), IdempotencyKey: []byte("k-5"), Body: m6.Body}
	id, err := q.AppendDraft(context.Background(), d)
	if err != nil || !d.Duplicate || id.Seq() != 6 {
		t.Fatalf("a key of the old directory: %v dup=%v seq %d", err, d.Duplicate, id.Seq())
	}
	// Its request's fingerprint was computed from the old log at start.
	d = &Draft{Method: []byte(m6.Method), URI: []byte(m6.URI), IdempotencyKey: []byte("k-5"), Body: append(m6.Body, 'x')}
	if _, err := q.AppendDraft(context.Background(), d); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("a key of the old directory with another body: %v, want ErrKeyMismatch", err)
	}
	ids := appendN(t, q, 1)
	if ids[0].Seq() != 41 {
		t.Fatalf("new message seq %d, want 41", ids[0].Seq())
	}
}

// A data directory written by the version before delivered blocks
// (testdata/v1-datadir.tar.gz, made by that version and copied as a kill
// -9 would leave it: 200 messages on targets a and b; for a, seqs 1-100
// delivered and checkpointed as per-seq records, 101-150 delivered in the
// outcome journal only, 151 retrying, 152 dead; b untouched) opens in
// place: the journal is applied as blocks, every state reads as written
// (status 200 + seq%3, at 1764900000 s + seq ns), nothing delivered is
// fetched again, before and after a restart.
func TestOpensDataDirBeforeBlocks(t *testing.T) {
	dir := untar(t, "v1-datadir.tar.gz")
	check := func(q *Queue) {
		t.Helper()
		for _, seq := range []uint64{1, 50, 100, 101, 128, 150} {
			_, st, err := q.Lookup(idOf(t, q, seq))
			must(t, err)
			a := st[0]
			if a.Phase != Delivered || len(a.History) != 1 || a.History[0].Status != 200+int(seq%3) ||
				!a.History[0].At.Equal(time.Unix(1764900000, int64(seq))) || st[1].Phase != Queued {
				t.Fatalf("seq %d: a %+v, b %s; want a delivered with its attempt, b queued", seq, a, st[1].Phase)
			}
		}
		for seq, want := range map[uint64]Phase{151: Retrying, 152: Dead, 153: Queued, 200: Queued} {
			_, st, err := q.Lookup(idOf(t, q, seq))
			must(t, err)
			if st[0].Phase != want {
				t.Fatalf("seq %d: a %s, want %s", seq, st[0].Phase, want)
			}
		}
		c, err := q.Counts("a", time.Time{}, time.Time{})
		must(t, err)
		if c.Delivered != 150 || c.Retrying != 1 || c.Dead != 1 || c.Queued != 48 {
			t.Fatalf("counts of a: %+v", c)
		}
	}
	s, q := openTest(t, Config{Dir: dir}, "a", "b")
	check(q)
	a, _ := q.Consumer("a")
	// Read as of an hour after the directory was written: seq 151's retry
	// is due a day after.
	asOf := time.Unix(1764900000, 0).Add(time.Hour)
	got := fetchAllAt(t, a, asOf)
	if len(got) != 48 || got[0].Seq != 153 {
		t.Fatalf("a fetched %d (first %d); want the 48 queued from 153", len(got), got[0].Seq)
	}
	for _, d := range got {
		a.Release(d)
	}
	must(t, s.Close())
	if n := dbBuckets(t, dir, "b/")["b/a"]; n != 2 {
		t.Fatalf("%d delivered blocks of a after the journal was applied, want 2 (seqs 101-150 fall in the blocks from 64 and 128)", n)
	}
	s, q = openTest(t, Config{Dir: dir}, "a", "b")
	defer s.Close()
	check(q)
}

// v1Message is a message as the build that wrote record version 1 read it
// back (testdata/v1-logs-messages.json, made by testdata/gen-v1).
type v1Message struct {
	ID         string
	EnqueuedAt int64
	Method     string
	URI        string
	Header     []Header
	Key        string
	Body       []byte
}

func sameMessage(t *testing.T, what string, got *Message, want v1Message, withID bool) {
	t.Helper()
	if withID && (got.ID.String() != want.ID || got.EnqueuedAt.UnixNano() != want.EnqueuedAt) {
		t.Errorf("%s: id %s at %d, want %s at %d", what, got.ID, got.EnqueuedAt.UnixNano(), want.ID, want.EnqueuedAt)
	}
	if got.Method != want.Method || got.URI != want.URI || got.IdempotencyKey != want.Key ||
		!bytes.Equal(got.Body, want.Body) || !reflect.DeepEqual(got.Header, want.Header) {
		t.Errorf("%s:\n got %s %s key %q %q %q\nwant %s %s key %q %q %q", what,
			got.Method, got.URI, got.IdempotencyKey, got.Header, got.Body,
			want.Method, want.URI, want.Key, want.Header, want.Body)
	}
}

// A data directory written with record version 1 (documents of every log
// protocol, with the headers delivery reads, and plain requests with an
// idempotency key: testdata/v1-logs-datadir.tar.gz) reads back exactly as
// the build that wrote it read it, in Fetch and Lookup; its keys still
// deduplicate and check their requests; messages appended now (version 2)
// go into the same logs, and both kinds read back alike after a restart.
func TestReadsRecordsOfVersion1(t *testing.T) {
	dir := untar(t, "v1-logs-datadir.tar.gz")
	raw, err := os.ReadFile(filepath.Join("testdata", "v1-logs-messages.json"))
	must(t, err)
	var want map[string][]v1Message
	must(t, json.Unmarshal(raw, &want))
	if len(want) != 6 {
		t.Fatalf("%d queues in the messages file", len(want))
	}
	open := func() *Store {
		s, err := Open(Config{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
		must(t, err)
		return s
	}
	s := open()
	for name, msgs := range want {
		q, err := s.Queue(name, []string{"store"})
		must(t, err)
		c, err := q.Consumer("store")
		must(t, err)
		got := fetchAll(t, c)
		sort.Slice(got, func(i, j int) bool { return got[i].Seq < got[j].Seq })
		if len(got) != len(msgs) {
			t.Fatalf("%s: %d messages, want %d", name, len(got), len(msgs))
		}
		for i, w := range msgs {
			sameMessage(t, name+" fetched", got[i].Message, w, true)
			id, err := store.ParseID(w.ID)
			must(t, err)
			m, _, err := q.Lookup(id)
			must(t, err)
			sameMessage(t, name+" looked up", m, w, true)
			// The same message appended now, in version 2.
			again := &Message{EnqueuedAt: time.Unix(0, w.EnqueuedAt), Method: w.Method, URI: w.URI, Header: w.Header, Body: w.Body}
			if _, err := q.Append(context.Background(), again); err != nil {
				t.Fatal(err)
			}
		}
	}
	plain, err := s.Queue("plain", []string{"store"})
	must(t, err)
	p := want["plain"][0]
	d := &Draft{Method: []byte(p.Method), URI: []byte(p.URI), IdempotencyKey: []byte(p.Key), Body: p.Body}
	if id, err := plain.AppendDraft(context.Background(), d); err != nil || !d.Duplicate || id.String() != p.ID {
		t.Fatalf("the key of a version 1 record: %v dup=%v id %s, want %s", err, d.Duplicate, id, p.ID)
	}
	d = &Draft{Method: []byte(p.Method), URI: []byte(p.URI), IdempotencyKey: []byte(p.Key), Body: append(p.Body, 'x')}
	if _, err := plain.AppendDraft(context.Background(), d); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("the key of a version 1 record with another body: %v, want ErrKeyMismatch", err)
	}
	must(t, s.Close())

	// After a restart (the head's index and keys rebuilt from logs that
	// hold both versions) every message reads as before, the old ones
	// first, then their copies in version 2.
	s = open()
	defer s.Close()
	for name, msgs := range want {
		q, err := s.Queue(name, []string{"store"})
		must(t, err)
		c, err := q.Consumer("store")
		must(t, err)
		got := fetchAll(t, c)
		sort.Slice(got, func(i, j int) bool { return got[i].Seq < got[j].Seq })
		if len(got) != 2*len(msgs) {
			t.Fatalf("%s after restart: %d messages, want %d", name, len(got), 2*len(msgs))
		}
		for i, w := range msgs {
			sameMessage(t, name+" old, after restart", got[i].Message, w, true)
			w.Key = "" // appended without it, so as not to be a repeat
			sameMessage(t, name+" new, after restart", got[len(msgs)+i].Message, w, false)
		}
	}
	plain, err = s.Queue("plain", []string{"store"})
	must(t, err)
	d = &Draft{Method: []byte(p.Method), URI: []byte(p.URI), IdempotencyKey: []byte(p.Key), Body: p.Body}
	if id, err := plain.AppendDraft(context.Background(), d); err != nil || !d.Duplicate || id.String() != p.ID {
		t.Fatalf("the key of a version 1 record after restart: %v dup=%v id %s, want %s", err, d.Duplicate, id, p.ID)
	}
}
