package buffer

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkPendingOutcomeMemory measures what the pending set (pending.go)
// holds in memory per outcome: n first deliveries completed in seq order,
// in CompleteBatch calls of batch outcomes, for a target named "inventory",
// with no checkpoint in between; then the checkpoint. bytes/outcome is the
// live heap (HeapAlloc after a GC) with them pending less the live heap
// once the checkpoint has written them into the segment's file and let go
// of them, over n: the blocks, the map and the journal frame buffers the
// outcomes point into. net-bytes/outcome is the live heap with them
// pending less before they were completed (the in-flight set they left
// made smaller), over n. A round that a checkpoint (every second) cut into
// is run again.
//
//	go test -run '^$' -bench PendingOutcomeMemory -benchtime 3x ./buffer/
func BenchmarkPendingOutcomeMemory(b *testing.B) {
	const n = 60000 // below checkpointAt, in fewer than maxPendingBlocks blocks
	for _, batch := range []int{16, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var per, net []float64
			for range b.N {
				for try := 0; ; try++ {
					if try == 5 {
						b.Fatal("a checkpoint cut into 5 rounds in a row")
					}
					p, nt, ok := pendingMemRound(b, n, batch)
					if ok {
						per, net = append(per, p), append(net, nt)
						break
					}
				}
			}
			b.ReportMetric(median(per), "bytes/outcome")
			b.ReportMetric(median(net), "net-bytes/outcome")
		})
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func liveHeap() float64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc)
}

// pendingMemRound is one round of BenchmarkPendingOutcomeMemory; ok is
// false if a checkpoint ran before the pending heap was read.
func pendingMemRound(b *testing.B, n, batch int) (per, net float64, ok bool) {
	b.StopTimer()
	defer b.StartTimer()
	s, err := Open(Config{Dir: b.TempDir(), Sync: SyncNever, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	q, err := s.Queue("orders", []string{"inventory"})
	if err != nil {
		b.Fatal(err)
	}
	// n+1 messages: the first one's outcome lines the round up with a
	// checkpoint.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i <= n; i += 8 {
				if _, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/o", Body: []byte("{}")}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	c, err := q.Consumer("inventory")
	if err != nil {
		b.Fatal(err)
	}
	var ds []*Delivery
	for range n {
		got, err := c.Fetch(1000, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		ds = append(ds, got...)
	}
	if len(ds) != n+1 {
		b.Fatalf("fetched %d, want %d", len(ds), n+1)
	}
	outs := make([]Outcome, batch)
	for i := range outs {
		outs[i] = Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}
	}
	// checkpointed waits (bounded) until a checkpoint after the ck-th has
	// written the pending outcomes (WriterStats.Checkpoints moves once they
	// are no longer held), and returns the count.
	checkpointed := func(ck uint64) uint64 {
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			if got := q.WriterStats().Checkpoints; got > ck {
				return got
			}
			if time.Now().After(end) {
				b.Fatal("no checkpoint within 5s")
			}
		}
	}
	// Just after a checkpoint, so that the next one (a second later) is
	// least likely to cut into the round.
	ck := q.WriterStats().Checkpoints
	if err := c.Complete(context.Background(), ds[0], outs[0]); err != nil {
		b.Fatal(err)
	}
	ck = checkpointed(ck)
	ds = ds[1:]
	before := liveHeap()
	for i := 0; i < n; i += batch {
		part := ds[i:min(i+batch, n)]
		for _, err := range c.CompleteBatch(context.Background(), part, outs[:len(part)]) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	held := liveHeap()
	if q.WriterStats().Checkpoints != ck { // all n were not held at once
		return 0, 0, false
	}
	checkpointed(ck)
	after := liveHeap()
	runtime.KeepAlive(ds)
	return (held - after) / float64(n), (held - before) / float64(n), true
}
