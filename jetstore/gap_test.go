package jetstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// Stream seqs can have gaps: an operator removes a message (nats stream
// rmm), or the server loses some in a damaged block. The counts cover the
// messages the stream holds, on the lease holder and on another node
// alike, with no time bounds (the watch of the states) as within them (a
// walk of the records), and a removed message's state is not counted.
func TestCountsWithGaps(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	url := serverURL(srv)
	sa, qa := openURLNode(t, url, "node-a")
	defer sa.Close()
	sb, qb := openURLNode(t, url, "node-b")
	defer sb.Close()
	ctx := context.Background()
	const n = 20
	ids := make([]store.ID, n)
	for i := range ids {
		id, err := qa.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	ca, _ := qa.Consumer("a")
	holding(t, ca)
	// 0..5 delivered, 6..9 in flight on node a, the rest queued.
	ds := fetchN(t, ca, 10)
	for _, d := range ds[:6] {
		if err := ca.Complete(ctx, d, store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}); err != nil {
			t.Fatal(err)
		}
	}
	// Remove a delivered message (its state stays in the bucket), one in
	// flight, and three queued ones, one of them the last: seqs are gone
	// inside [first, last] and at its end.
	for _, i := range []int{2, 7, 12, 13, n - 1} {
		if err := qa.stream.DeleteMsg(ctx, ids[i].Seq()); err != nil {
			t.Fatalf("remove message %d: %v", i, err)
		}
	}
	want := store.Counts{Target: "a", Accepted: n - 5, Delivered: 5, InFlight: 3, Queued: n - 5 - 8}
	defer func(m int) { countDeletedMax = m }(countDeletedMax)
	for _, max := range []int{countDeletedMax, 4} { // 4: too many gone, the count walks
		countDeletedMax = max
		for _, node := range []struct {
			name string
			q    *Queue
		}{{"the holder", qa}, {"another node", qb}} {
			for _, b := range []struct {
				name         string
				since, until time.Time
			}{{"", time.Time{}, time.Time{}}, {" within time bounds", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)}} {
				// A page ending on a removed seq, at the stream's end,
				// does not wait for it (FetchMaxWait: opTimeout/2).
				t0 := time.Now()
				c, err := node.q.Counts("a", b.since, b.until)
				if err != nil {
					t.Fatal(err)
				}
				if c != want || c.Check() != nil {
					t.Errorf("counts%s on %s (at most %d gone asked for): %+v, want %+v", b.name, node.name, max, c, want)
				}
				if d := time.Since(t0); d > opTimeout/4 {
					t.Errorf("counts%s on %s (at most %d gone asked for) took %v", b.name, node.name, max, d)
				}
			}
		}
	}
}
