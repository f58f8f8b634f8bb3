package buffer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// TestExport1e6FlatMemory lists 10^6 messages (10^5 under the race
// detector, which is ~10x slower) the way the admin API's NDJSON export
// does, 4096 at a time, encoding each row, and checks that the live heap
// stays flat: bounded by a chunk's rows, not by the number listed. A
// sampler reads the heap every 20ms while the export runs.
func TestExport1e6FlatMemory(t *testing.T) {
	n := 1_000_000
	if raceEnabled || testing.Short() {
		n = 100_000
	}
	s, q := openTest(t, Config{Sync: SyncNever}, "a", "b")
	defer s.Close()
	ctx := context.Background()
	t0 := time.Now()
	ds := make([]*Draft, 0, 4096)
	for i := 0; i < n; {
		ds = ds[:0]
		for ; len(ds) < 4096 && i < n; i++ {
			ds = append(ds, &Draft{Method: []byte("POST"), URI: []byte("/o"), Body: []byte(`{"n":1}`), IdempotencyKey: fmt.Appendf(nil, "k-%d", i)})
		}
		_, errs := q.AppendDrafts(ctx, ds)
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("appended %d in %v", n, time.Since(t0))
	// Some outcomes, so that rows carry states: a's first 10000 delivered.
	a, _ := q.Consumer("a")
	for done := 0; done < 10000; {
		got, err := a.Fetch(1000, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		outs := make([]Outcome, len(got))
		for i := range outs {
			outs[i] = Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}
		}
		for _, err := range a.CompleteBatch(ctx, got, outs) {
			if err != nil {
				t.Fatal(err)
			}
		}
		done += len(got)
	}

	// The live heap (after a GC) at every tenth of the export: flat means
	// it does not grow with the rows listed.
	live := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := live()
	var samples []uint64
	t1 := time.Now()
	var gcTime time.Duration
	enc := json.NewEncoder(io.Discard)
	rows, delivered := 0, 0
	var after uint64
	for range n/4096 + 10 {
		last, end, err := q.Messages(store.Filter{}, after, 4096, func(r *store.Row) bool {
			rows++
			if r.Targets[0].Phase == Delivered {
				delivered++
			}
			if rows%(n/10) == 0 {
				g := time.Now()
				samples = append(samples, live())
				gcTime += time.Since(g)
			}
			return enc.Encode(r) == nil
		})
		if err != nil {
			t.Fatal(err)
		}
		after = last
		if end {
			break
		}
	}
	elapsed := time.Since(t1) - gcTime
	if rows != n || delivered != 10000 {
		t.Fatalf("exported %d rows (%d delivered to a), want %d (10000)", rows, delivered, n)
	}
	t2 := time.Now()
	c, err := q.Counts("a", time.Time{}, time.Time{})
	if err != nil || c.Accepted != uint64(n) || c.Delivered != 10000 || c.Queued != uint64(n-10000) || c.Check() != nil {
		t.Fatalf("counts: %+v %v", c, err)
	}
	t.Logf("counted %d messages of one target in %v", n, time.Since(t2).Round(time.Millisecond))
	var most uint64
	for _, v := range samples {
		most = max(most, v)
	}
	grew := int64(most) - int64(base)
	t.Logf("exported %d rows in %v (%.0f rows/s); live heap %d MiB before, at each tenth %v MiB",
		rows, elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(), base>>20, mib(samples))
	// The rows themselves (~150 bytes each as JSON) would be ~150 MB at
	// 10^6; one chunk's worth is a few MiB whatever n is.
	if len(samples) < 10 || grew > 16<<20 {
		t.Fatalf("the live heap grew by %d MiB while exporting %d rows: not flat", grew>>20, rows)
	}
}

func mib(v []uint64) []uint64 {
	out := make([]uint64, len(v))
	for i, x := range v {
		out[i] = x >> 20
	}
	return out
}

// BenchmarkCounts counts one target over 10^5 messages that all have an
// outcome (delivered), the costly case: one state decode each. Reported
// per message.
//
//	go test -run '^$' -bench Counts -benchtime 10x ./buffer/
func BenchmarkCounts(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir(), Sync: SyncNever})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const n = 100_000
	ds := make([]*Draft, 0, 4096)
	for i := 0; i < n; {
		ds = ds[:0]
		for ; len(ds) < 4096 && i < n; i++ {
			ds = append(ds, &Draft{Method: []byte("POST"), URI: []byte("/o"), Body: []byte(`{"n":1}`)})
		}
		q.AppendDrafts(ctx, ds)
	}
	a, _ := q.Consumer("a")
	for done := 0; done < n; {
		got, err := a.Fetch(1000, time.Now())
		if err != nil || len(got) == 0 {
			b.Fatal(err)
		}
		outs := make([]Outcome, len(got))
		for i := range outs {
			outs[i] = Outcome{Phase: Delivered, Attempt: Attempt{At: time.Now(), Status: 200}}
		}
		a.CompleteBatch(ctx, got, outs)
		done += len(got)
	}
	b.ResetTimer()
	for range b.N {
		c, err := q.Counts("a", time.Time{}, time.Time{})
		if err != nil || c.Delivered != n {
			b.Fatalf("%+v %v", c, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/message")
}
