// Micro benchmarks of the buffered handler's parts, cited in commit messages:
//
//	go test -run '^$' -bench Micro -benchtime 1000000x ./proxy/

package proxy

import (
	"bytes"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

func microSetup(b *testing.B) (*Server, *route, *fasthttp.RequestCtx) {
	s, _ := newTestServer(b, pausedOrders, buffer.Config{Sync: buffer.SyncNever, Logger: slog.New(slog.DiscardHandler)}, nil)
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/api/orders")
	req.Header.SetHost("127.0.0.1:18081")
	req.Header.SetContentType("application/json")
	req.SetBody(bytes.Repeat([]byte("x"), 1024))
	ctx := new(fasthttp.RequestCtx)
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
	return s, s.routes()[0], ctx
}

func BenchmarkMicroWriteAccepted(b *testing.B) {
	_, r, ctx := microSetup(b)
	var etaBuf [maxTargetsInline]targetETA
	etas := r.newETAs(etaBuf[:0], time.Now())
	id := buffer.ID{}
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		writeAccepted(ctx, id, "queued", etas)
	}
}

func BenchmarkMicroNewETAs(b *testing.B) {
	_, r, _ := microSetup(b)
	b.ReportAllocs()
	var etaBuf [maxTargetsInline]targetETA
	for b.Loop() {
		r.newETAs(etaBuf[:0], time.Now())
	}
}

func BenchmarkMicroStoredHeaders(b *testing.B) {
	_, _, ctx := microSetup(b)
	b.ReportAllocs()
	d := new(buffer.Draft)
	fwd := make([]byte, 0, 64)
	for b.Loop() {
		addStoredHeaders(ctx, d, fwd)
		d.Reset()
	}
}
