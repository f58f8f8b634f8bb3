package buffer

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// untar unpacks testdata/name (a gzipped tar of a data directory) into a
// new directory.
func untar(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	must(t, err)
	dir := t.TempDir()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		must(t, err)
		p := filepath.Join(dir, filepath.Clean(h.Name))
		if h.Typeflag == tar.TypeDir {
			must(t, os.MkdirAll(p, 0o755))
			continue
		}
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		must(t, err)
		_, err = io.Copy(out, tr)
		must(t, err)
		out.Close()
	}
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
	var got []*Delivery
	for range 100 {
		ds, err := a.Fetch(64, asOf)
		must(t, err)
		if len(ds) == 0 {
			break
		}
		got = append(got, ds...)
	}
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
