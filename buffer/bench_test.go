package buffer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
)

// BenchmarkAppend measures durable appends of 1 KiB messages through group
// commit, with 1, 16 and 256 concurrent appenders and each sync mode.
// It reports msgs/s and the p50/p99 latency of one Append.
//
//	go test -run '^$' -bench Append -benchtime 20000x ./buffer/
func BenchmarkAppend(b *testing.B) {
	modes := []struct {
		name string
		mode SyncMode
	}{{"always", SyncAlways}, {"interval10ms", SyncInterval}, {"never", SyncNever}}
	for _, m := range modes {
		for _, conc := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("fsync=%s/appenders=%d", m.name, conc), func(b *testing.B) {
				q := openBenchQueue(b, Config{Sync: m.mode, SegmentBytes: 256 << 20})
				all, el := timedAppends(b, q, conc, make([]byte, 1024))
				reportAppends(b, all, el)
				if ws := q.WriterStats(); ws.Commits > 0 {
					b.ReportMetric(float64(ws.Requests)/float64(ws.Commits), "msgs/commit")
					b.ReportMetric(float64(ws.Time.Microseconds())/float64(ws.Commits), "µs/commit")
				}
			})
		}
	}
}

// BenchmarkIdempotentAppendSegments measures what an Idempotency-Key costs an
// append when the queue holds N sealed segments: a new key is checked against
// every sealed segment's key filter, and looked up in its bbolt file (one
// read transaction) only where the filter says maybe, before it is stored.
// Without the filters the cost grew by ~4 µs per sealed segment. One
// appender, fsync never, 64 KiB segments (so N is reached quickly); each op
// is one append with a new key and one without, and lookup-µs is the
// difference between the two, so commits and segment rolls cancel out.
//
//	go test -run '^$' -bench IdempotentAppendSegments -benchtime 2000x ./buffer/
func BenchmarkIdempotentAppendSegments(b *testing.B) {
	for _, segs := range []int{1, 30, 200} {
		b.Run(fmt.Sprintf("segments=%d", segs), func(b *testing.B) {
			q := openBenchQueue(b, Config{Sync: SyncNever, SegmentBytes: 64 << 10})
			body := make([]byte, 1024)
			add := func(key []byte) {
				d := &Draft{Method: []byte("POST"), URI: []byte("/o"), IdempotencyKey: key, Body: body}
				if _, err := q.AppendDraft(context.Background(), d); err != nil {
					b.Fatal(err)
				}
				if d.Duplicate {
					b.Fatalf("new key %q taken for a duplicate", key)
				}
			}
			for i := 0; q.Stats().Segments < segs+1; i++ {
				if i > segs*200 {
					b.Fatalf("%d appends made only %d segments", i, q.Stats().Segments)
				}
				add(fmt.Appendf(nil, "fill-%d", i))
			}
			b.ResetTimer()
			var keyed, plain time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				add(fmt.Appendf(nil, "new-%d", i))
				t1 := time.Now()
				add(nil)
				keyed, plain = keyed+t1.Sub(t0), plain+time.Since(t1)
			}
			b.ReportMetric(float64(keyed.Microseconds())/float64(b.N), "keyed-µs")
			b.ReportMetric(float64(plain.Microseconds())/float64(b.N), "plain-µs")
			b.ReportMetric(float64((keyed-plain).Microseconds())/float64(b.N), "lookup-µs")
		})
	}
}

// openBenchQueue opens a store in a temporary directory (cfg.Dir and
// cfg.Logger are set here) and returns its queue "bench" with one target;
// the store is closed when b ends.
func openBenchQueue(b *testing.B, cfg Config) *Queue {
	b.Helper()
	cfg.Dir, cfg.Logger = b.TempDir(), slog.New(slog.DiscardHandler)
	s, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	q, err := s.Queue("bench", []string{"t"})
	if err != nil {
		b.Fatal(err)
	}
	return q
}

// BenchmarkAppendOnSpares compares heads on new log files with heads that
// write over spare logs (deleted segments' files, see takeSpare), fsync
// always: an fdatasync then flushes data alone, not the file's new size and
// blocks. "spare-cold" drops the spares' pages from the page cache first,
// as after days on disk; readKiB is what the process read from disk (a
// write ending inside a page the cache lacks reads it first; padWrite
// prevents that). Run a fixed count, so that the spares (3 of 64 MiB) are
// made once and outlast the run:
//
//	go test -run '^$' -bench AppendOnSpares -benchtime 100000x ./buffer/
func BenchmarkAppendOnSpares(b *testing.B) {
	for _, log := range []string{"new", "spare", "spare-cold"} {
		for _, conc := range []int{16, 256} {
			b.Run(fmt.Sprintf("log=%s/appenders=%d", log, conc), func(b *testing.B) {
				cfg := Config{Dir: b.TempDir(), Logger: slog.New(slog.DiscardHandler), SegmentBytes: 64 << 20}
				if log != "new" {
					qdir := filepath.Join(cfg.Dir, "queues", "bench")
					if err := os.MkdirAll(qdir, 0o755); err != nil {
						b.Fatal(err)
					}
					for i := range 3 {
						writeSpare(b, filepath.Join(qdir, spareName(uint64(1+i))), cfg.SegmentBytes, log == "spare-cold")
					}
				}
				s, err := Open(cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				q, err := s.Queue("bench", []string{"t"})
				if err != nil {
					b.Fatal(err)
				}
				body := make([]byte, 1024)
				rb0 := readBytes()
				var n atomic.Int64
				b.SetBytes(int64(len(body)))
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for range conc {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for n.Add(1) <= int64(b.N) {
							if _, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/api/orders", Body: body}); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
				if rb := readBytes(); rb >= 0 && rb0 >= 0 {
					b.ReportMetric(float64(rb-rb0)/1024, "readKiB")
				}
				if ws := q.WriterStats(); ws.Commits > 0 {
					b.ReportMetric(float64(ws.Requests)/float64(ws.Commits), "msgs/commit")
					b.ReportMetric(float64(ws.Time.Microseconds())/float64(ws.Commits), "µs/commit")
				}
			})
		}
	}
}

// BenchmarkComplete measures what recording deliveries costs the store:
// b.N queued messages are fetched, 64 at a time, and completed Delivered
// with CompleteBatch from 4 recorders at once (a drainer's recorder hands
// over what its workers finished), then the queue is closed, which
// checkpoints the journal into the segments' bbolt files. It reports
// outcomes/s and the CPU microseconds per outcome of the whole (fetch,
// journal, checkpoint), with fsync always and never.
//
//	go test -run '^$' -bench Complete -benchtime 100000x ./buffer/
func BenchmarkComplete(b *testing.B) {
	for _, m := range []struct {
		name string
		mode SyncMode
	}{{"always", SyncAlways}, {"never", SyncNever}} {
		b.Run("fsync="+m.name, func(b *testing.B) {
			q := openBenchQueue(b, Config{Sync: m.mode, SegmentBytes: 256 << 20})
			body := make([]byte, 1024)
			ds := make([]*Draft, 0, 256)
			for i := 0; i < b.N; i += len(ds) {
				ds = ds[:0]
				for range min(256, b.N-i) {
					ds = append(ds, &Draft{Method: []byte("POST"), URI: []byte("/api/orders"), Body: body})
				}
				if _, errs := q.AppendDrafts(context.Background(), ds); errs[0] != nil {
					b.Fatal(errs[0])
				}
			}
			c, err := q.Consumer("t")
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start, cpu0 := time.Now(), testutil.CPUTime()
			var wg sync.WaitGroup
			var mu sync.Mutex
			for range 4 {
				wg.Go(func() {
					outs := make([]Outcome, 64)
					for {
						mu.Lock()
						got, err := c.Fetch(64, time.Now())
						mu.Unlock()
						if err != nil {
							b.Error(err)
							return
						}
						if len(got) == 0 {
							return
						}
						for i := range got {
							outs[i] = Outcome{Phase: Delivered, Attempt: Attempt{N: 1, At: time.Now(), Status: 200, Duration: time.Millisecond}}
						}
						for _, err := range c.CompleteBatch(context.Background(), got, outs[:len(got)]) {
							if err != nil {
								b.Error(err)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			if err := q.Close(); err != nil {
				b.Fatal(err)
			}
			el, cpu := time.Since(start), testutil.CPUTime()-cpu0
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "outcomes/s")
			if cpu > 0 {
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/outcome")
			}
		})
	}
}

// BenchmarkAppendWhileDelivering measures durable appends (16 appenders,
// 1 KiB, fsync always) while a consumer delivers everything appended, so
// that Delivered outcomes go through the journal and a checkpoint moves
// them into bbolt every second. It reports the append latency's p50,
// p99, p99.9 and maximum: what a checkpoint holding up the writer shows
// as. Run it long enough for several checkpoints:
//
//	go test -run '^$' -bench AppendWhileDelivering -benchtime 60000x ./buffer/
func BenchmarkAppendWhileDelivering(b *testing.B) {
	q := openBenchQueue(b, Config{Sync: SyncAlways, SegmentBytes: 64 << 20})
	c, err := q.Consumer("t")
	if err != nil {
		b.Fatal(err)
	}
	var stop atomic.Bool
	var drain sync.WaitGroup
	drain.Go(func() { // the consumer: fetch and record Delivered, until stopped
		outs := make([]Outcome, 256)
		for !stop.Load() {
			got, err := c.Fetch(256, time.Now())
			if err != nil {
				b.Error(err)
				return
			}
			if len(got) == 0 {
				select {
				case <-c.Ready():
				case <-time.After(10 * time.Millisecond):
				}
				continue
			}
			for i := range got {
				outs[i] = Outcome{Phase: Delivered, Attempt: Attempt{N: 1, At: time.Now(), Status: 200}}
			}
			for _, err := range c.CompleteBatch(context.Background(), got, outs[:len(got)]) {
				if err != nil {
					b.Error(err)
					return
				}
			}
		}
	})
	ck0 := q.WriterStats().Checkpoints
	all, el := timedAppends(b, q, 16, make([]byte, 1024))
	stop.Store(true)
	drain.Wait()
	reportAppends(b, all, el)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)*999/1000].Microseconds()), "p99.9-µs")
		b.ReportMetric(float64(all[len(all)-1].Microseconds()), "max-µs")
	}
	b.ReportMetric(float64(q.WriterStats().Checkpoints-ck0), "checkpoints")
}

// timedAppends makes b.N appends of body to q from conc goroutines, timing
// each, and returns their latencies, sorted, and the time they took.
func timedAppends(b *testing.B, q *Queue, conc int, body []byte) ([]time.Duration, time.Duration) {
	lat := make([][]time.Duration, conc)
	var n atomic.Int64
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for g := range conc {
		wg.Go(func() {
			for n.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if _, err := q.Append(context.Background(), &Message{Method: "POST", URI: "/api/orders", Body: body}); err != nil {
					b.Error(err)
					return
				}
				lat[g] = append(lat[g], time.Since(t0))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	return all, el
}

// reportAppends reports the rate and the p50 and p99 latency of appends.
func reportAppends(b *testing.B, all []time.Duration, el time.Duration) {
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64(len(all))/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
