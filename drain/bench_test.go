package drain

import (
	"context"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/valyala/fasthttp"
)

const benchConcurrency = 64

// noopServer answers 200 to everything, on 127.0.0.1.
func noopServer(b *testing.B) string {
	return "http://" + testutil.Serve(b, &fasthttp.Server{Handler: func(*fasthttp.RequestCtx) {}})
}

// BenchmarkDrainNoop measures delivered messages per second: a drainer with
// unlimited rate and concurrency 64, against a server that does nothing. The
// store is on SyncNever so that the number is the drainer's (fetch, replay,
// record), not the disk's fsync latency; SyncAlways is the second case. Each
// runs with the attempts on the delivery loop (loop=on, the default on
// Linux) and in goroutines (loop=off, Config.NoLoop).
func BenchmarkDrainNoop(b *testing.B) {
	type benchCase struct {
		name   string
		sync   buffer.SyncMode
		noLoop bool
	}
	var cases []benchCase
	for _, s := range []struct {
		name string
		sync buffer.SyncMode
	}{{"sync=never", buffer.SyncNever}, {"sync=always", buffer.SyncAlways}} {
		cases = append(cases, benchCase{s.name + "/loop=on", s.sync, false}, benchCase{s.name + "/loop=off", s.sync, true})
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			srvURL := noopServer(b)
			st := openStore(b, b.TempDir(), bc.sync)
			q := buftest.Queue(b, st, "orders", "a")
			appendN(b, q, b.N, order)
			target := testTarget("a", srvURL)
			target.Concurrency = benchConcurrency
			d, err := New(Config{Route: "orders", Target: target, Logger: quietLogger(), NoLoop: bc.noLoop}, consumer(b, q, "a"))
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)

			b.ResetTimer()
			start := time.Now()
			cpu0 := testutil.CPUTime()
			go func() { done <- d.Run(ctx) }()
			for d.Stats().Delivered < uint64(b.N) {
				time.Sleep(200 * time.Microsecond)
			}
			elapsed := time.Since(start)
			cpu := testutil.CPUTime() - cpu0
			reportCPU(b, cpu, elapsed)
			b.StopTimer()
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			if ws := q.WriterStats(); ws.Commits > 0 {
				b.ReportMetric(float64(ws.Requests)/float64(ws.Commits), "reqs/commit")
				b.ReportMetric(float64(ws.Time.Microseconds())/float64(ws.Commits), "µs/commit")
			}
		})
	}
}

// BenchmarkFasthttpClientNoop is the ceiling for BenchmarkDrainNoop: a bare
// fasthttp.HostClient sending similar requests at the same concurrency.
func BenchmarkFasthttpClientNoop(b *testing.B) {
	srvURL := noopServer(b)
	u, _ := url.Parse(srvURL)
	hc := &fasthttp.HostClient{Addr: u.Host, MaxConns: benchConcurrency, NoDefaultUserAgentHeader: true}
	body := order(1).Body
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	cpu0 := testutil.CPUTime()
	for range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for next.Add(1) <= int64(b.N) {
				req.Reset()
				req.Header.SetMethod("POST")
				req.SetRequestURI(srvURL + "/api/orders?x=1")
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(HeaderID, "0000000000000007abcdefghjk")
				req.Header.Set(HeaderAttempt, "1")
				req.Header.Set(HeaderEnqueuedAt, "2025-01-01T00:00:00Z")
				req.Header.Set(HeaderIdempotencyKey, "0000000000000007abcdefghjk")
				req.SetBodyRaw(body)
				if err := hc.DoDeadline(req, resp, time.Now().Add(10*time.Second)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := testutil.CPUTime() - cpu0
	reportCPU(b, cpu, elapsed)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}

// reportCPU reports the cores the process used while the benchmark ran and
// its CPU per message (both 0 where cpuTime cannot measure). The process
// holds the downstream too, so both include its share.
func reportCPU(b *testing.B, cpu, elapsed time.Duration) {
	if cpu <= 0 {
		return
	}
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cores")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
}
