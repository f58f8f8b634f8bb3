package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
)

// BenchmarkStreamRequestBody prices fasthttp's StreamRequestBody for a
// buffered route: the whole server (connections over loopback TCP,
// fasthttp's reading and parsing, readBody, the handler, the queue with
// fsync always) under 256 keep-alive connections sending 1 KiB POSTs, as
// bench/ingest.sh does, with the listener streaming bodies (as when some
// route passes requests through) or reading them whole (when none does).
// cpu-ns/op is the process's CPU time per request: the clients' share
// (the same in both) included, so the difference between the two is what
// streaming costs. -count runs one mode's rounds back to back, so run the
// modes alternately and compare the rounds' differences:
//
//	go test -c -o /tmp/proxy.test ./proxy/ && cd proxy &&
//	for i in 1 2 3 4 5 6 7 8; do for m in false true; do
//	  /tmp/proxy.test -test.run '^$' -test.bench "StreamRequestBody/stream=$m\$" -test.benchtime 50000x
//	done; done
func BenchmarkStreamRequestBody(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	req := []byte(fmt.Sprintf("POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1:18081\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	for _, stream := range []bool{false, true} {
		b.Run(fmt.Sprintf("stream=%t", stream), func(b *testing.B) {
			s, _ := newTestServer(b, pausedOrders, buffer.Config{Sync: buffer.SyncAlways, Logger: slog.New(slog.DiscardHandler)}, nil)
			s.srv.StreamRequestBody = stream
			addr := listen(b, s)
			b.SetParallelism(128) // with GOMAXPROCS=2: 256 connections, as wrk -c256
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			cpu0 := testutil.CPUTime()
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				br := bufio.NewReader(c)
				var resp fasthttp.Response
				for pb.Next() {
					if _, err := c.Write(req); err != nil {
						b.Error(err)
						return
					}
					if err := resp.Read(br); err != nil {
						b.Error(err)
						return
					}
					if code := resp.StatusCode(); code != fasthttp.StatusAccepted {
						b.Errorf("status %d: %s", code, resp.Body())
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((testutil.CPUTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
