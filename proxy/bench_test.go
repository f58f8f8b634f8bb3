package proxy

import (
	"bytes"
	"log/slog"
	"net"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
)

// pausedOrders is the benchmarks' policy: one buffer route whose target is
// paused, so that nothing is delivered while they run.
const pausedOrders = `
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    targets:
      - { name: paused, url: "http://127.0.0.1:9", rate: 0 }
`

// BenchmarkHandleBuffered measures the buffered route's handler without the
// network: a parsed 1 KiB POST (headers shaped like wrk's) handed to
// Server.handle by 256 concurrent callers, through the record encoding, the
// hand-off to the queue's writer, the group commit and the 202 body. It is
// the part of bench/ingest.sh's cost that is sluice's own; the rest is
// fasthttp's connection handling, which the no-op reference pays too.
//
//	go test -run '^$' -bench HandleBuffered -benchtime 200000x -count 5 ./proxy/
func BenchmarkHandleBuffered(b *testing.B) {
	for _, mode := range []struct {
		name string
		sync buffer.SyncMode
	}{{"fsync=always", buffer.SyncAlways}, {"fsync=never", buffer.SyncNever}} {
		b.Run(mode.name, func(b *testing.B) {
			s, _ := newTestServer(b, pausedOrders, buffer.Config{Sync: mode.sync, Logger: slog.New(slog.DiscardHandler)}, nil)
			body := bytes.Repeat([]byte("x"), 1024)
			addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
			b.SetParallelism(128) // with GOMAXPROCS=2: 256 callers, as wrk -c256
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := testutil.CPUTime()
			b.RunParallel(func(pb *testing.PB) {
				var ctx fasthttp.RequestCtx
				var req fasthttp.Request
				for pb.Next() {
					req.Reset()
					req.Header.SetMethod("POST")
					req.SetRequestURI("/api/orders")
					req.Header.SetHost("127.0.0.1:18081")
					req.Header.SetContentType("application/json")
					req.SetBody(body)
					ctx.Init(&req, addr, nil)
					s.handle(&ctx)
					if c := ctx.Response.StatusCode(); c != fasthttp.StatusAccepted {
						b.Errorf("status %d: %s", c, ctx.Response.Body())
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((testutil.CPUTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			if n := s.testQueue("orders").Stats().Appended; n < uint64(b.N) {
				b.Fatalf("%d appended, want at least %d", n, b.N)
			}
		})
	}
}
