package drain

import (
	"bytes"
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/store"
)

// bulkLines delivers every message of q to a mock Elasticsearch through an
// elasticsearch-bulk target and returns the action and document lines it
// received, each message id in an _id replaced by its seq (ids differ
// between stores, seqs do not), sorted.
func bulkLines(t *testing.T, q *buffer.Queue, n int) []string {
	t.Helper()
	es := newMockES(nil)
	ds := newDownstream(t, es.respond)
	d, _ := startDrainer(t, Config{Route: "logs", Target: bulkTarget(ds.url)}, consumer(t, q, "store"))
	waitFor(t, 20*time.Second, "every document delivered", func() bool { return d.Stats().Delivered == uint64(n) })
	var lines []string
	for _, h := range ds.snapshot() {
		for line := range bytes.Lines(h.body) {
			var action map[string]map[string]any
			if json.Unmarshal(line, &action) == nil && len(action) == 1 {
				for _, meta := range action {
					if id, ok := meta["_id"].(string); ok {
						if mid, err := store.ParseID(id); err == nil {
							meta["_id"] = "seq " + strconv.FormatUint(mid.Seq(), 10)
						}
					}
				}
				line, _ = json.Marshal(action)
			}
			lines = append(lines, strings.TrimSpace(string(line)))
		}
	}
	sort.Strings(lines)
	return lines
}

// Documents an elasticsearch route stored as record version 1 (a data
// directory written by the build at 3a04a96, buffer/testdata) are
// delivered exactly as the same messages stored now: the same actions
// (operation, index, pipeline, routing, own _id) and documents.
func TestBulkDeliversRecordsOfVersion1(t *testing.T) {
	dir := testutil.Untar(t, "../buffer/testdata/v1-logs-datadir.tar.gz")
	old := openStore(t, dir, buffer.SyncAlways)
	defer old.Close()
	oq, err := old.Queue("logs", []string{"store"})
	testutil.Must(t, err)
	const n = 5
	_, nq, _ := newQueue(t, "store")
	c := consumer(t, oq, "store")
	ms, err := c.Fetch(100, time.Now())
	testutil.Must(t, err)
	if len(ms) != n {
		t.Fatalf("%d messages in the old directory, want %d", len(ms), n)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Seq < ms[j].Seq })
	for _, m := range ms {
		again := &buffer.Message{EnqueuedAt: m.EnqueuedAt, Method: m.Method, URI: m.URI, Header: m.Header, Body: m.Body}
		if _, err := nq.Append(t.Context(), again); err != nil {
			t.Fatal(err)
		}
		c.Release(m)
	}
	got, want := bulkLines(t, oq, n), bulkLines(t, nq, n)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("version 1 records delivered:\n%s\nthe same messages stored now:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	joined := strings.Join(got, "\n")
	for _, s := range []string{`"_index":"system"`, `"pipeline":"p1"`, `"_id":"own"`, `"routing":"r"`, `{"msg":"4","n":[1,2]}`, `"create":`, `"index":`} {
		if !strings.Contains(joined, s) {
			t.Errorf("delivered without %s:\n%s", s, joined)
		}
	}
	if len(got) != 2*n {
		t.Errorf("%d lines delivered, want %d", len(got), 2*n)
	}
}
