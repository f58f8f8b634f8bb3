// Micro benchmarks of the passthrough path's header handling:
//
//	go test -run '^$' -bench Passthrough -benchtime 1000000x ./proxy/

package proxy

import (
	"bufio"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// benchRequest is what wrk sends in bench/passthrough.sh, as the server has
// parsed it.
func benchRequest(b *testing.B) *fasthttp.Request {
	var req fasthttp.Request
	raw := "POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1:18082\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
	if err := req.ReadLimitBody(bufioReader(raw), 0); err != nil {
		b.Fatal(err)
	}
	return &req
}

// benchResponse is bench/noop's answer, as the pool has parsed it.
func benchResponse(b *testing.B) *fasthttp.Response {
	var res fasthttp.Response
	raw := "HTTP/1.1 202 Accepted\r\nServer: noop\r\nDate: Sat, 05 Dec 2026 02:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
	if err := res.Read(bufioReader(raw)); err != nil {
		b.Fatal(err)
	}
	return &res
}

func BenchmarkPassthroughStripHop(b *testing.B) {
	req := benchRequest(b)
	b.ReportAllocs()
	for b.Loop() {
		stripHop(&req.Header)
	}
}

func BenchmarkPassthroughStripHopResponse(b *testing.B) {
	res := benchResponse(b)
	b.ReportAllocs()
	for b.Loop() {
		stripHopResponse(&res.Header)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
