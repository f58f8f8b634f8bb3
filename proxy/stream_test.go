package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/testutil"
)

// patternReader yields n bytes of a position-dependent pattern, so a lost,
// repeated or reordered piece changes the hash.
type patternReader struct{ off, n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := uint64(p.off+int64(i)) * 0x9E3779B97F4A7C15
		b[i] = byte(x >> 56)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func patternSum(n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, &patternReader{n: n})
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// heapPeak samples HeapInuse every 5ms until stop is called, which returns
// the largest sample.
func heapPeak() (stop func() uint64) {
	var (
		peak uint64
		mu   sync.Mutex
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mu.Lock()
			peak = max(peak, ms.HeapInuse)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

const streamPolicy = `
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    max_body: 1KiB
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
  - name: files
    match: { path: /files/ }
    mode: passthrough
    upstream: http://%s
    max_body: 80MiB
`

// TestPassthroughStreamsLargeResponse sends a 64 MiB answer through a
// passthrough route: it arrives intact, and the heap of the process (which
// holds the upstream, sluice and the client) does not grow by anything near
// its size, because sluice copies it to the client as it arrives.
func TestPassthroughStreamsLargeResponse(t *testing.T) {
	const size = 64 << 20
	upAddr := testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/octet-stream")
		switch string(ctx.Path()) {
		case "/files/small":
			ctx.SetBodyString("small")
			return
		case "/files/chunked":
			ctx.SetBodyStream(&patternReader{n: size}, -1)
			return
		}
		ctx.SetBodyStream(&patternReader{n: size}, size)
	}})
	addr, s := startPolicy(t, fmt.Sprintf(streamPolicy, upAddr))

	want := patternSum(size)
	c := &http.Client{Timeout: 60 * time.Second}
	for _, path := range []string{"/files/big", "/files/chunked"} {
		t.Run(path, func(t *testing.T) {
			base := heapInuse()
			stop := heapPeak()
			resp, err := c.Get("http://" + addr + path)
			if err != nil {
				stop()
				t.Fatal(err)
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			peak := stop()
			if err != nil || n != size || resp.StatusCode != 200 {
				t.Fatalf("status %d, read %d bytes of %d: %v", resp.StatusCode, n, size, err)
			}
			if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
				t.Fatalf("body hash %x, want %x", got, want)
			}
			// Held whole, the body would add at least 64 MiB (fasthttp's
			// buffer pool grows by doubling, so up to 128 MiB).
			if grew := int64(peak) - int64(base); grew > 24<<20 {
				t.Fatalf("heap grew by %d MiB while a %d MiB answer passed through", grew>>20, size>>20)
			}
			t.Logf("heap in use: %d MiB before, peak %d MiB", base>>20, peak>>20)
		})
	}

	// The small-answer path is unchanged, HEAD has no body to wait for, and a
	// buffer route on the same server still refuses an oversized body before
	// it is sent.
	for range 3 { // the pooled upstream connection is reused after a streamed answer
		if r := do(t, "GET", "http://"+addr+"/files/small", "", nil); r.StatusCode() != 200 || string(r.Body()) != "small" {
			t.Fatalf("GET: %d %q", r.StatusCode(), r.Body())
		}
	}
	if got := raw(t, addr, "HEAD /files/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(got, "200 ") {
		t.Fatalf("HEAD: %q", got)
	}
	if got := raw(t, addr, "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"); !strings.HasPrefix(got, `413 {"error":{"code":"body_too_large"`) {
		t.Fatalf("oversized body on a buffer route: %q", got)
	}
	if n := s.testQueue("orders").Stats().Appended; n != 0 {
		t.Fatalf("%d stored", n)
	}
}

// rawUpstream accepts up to conns connections on 127.0.0.1, one after
// another, and hands each to handle with a deadline d away, then closes
// it; the listener is closed when the test ends. It returns the address.
// It is for upstreams that break HTTP on purpose.
func rawUpstream(t *testing.T, conns int, d time.Duration, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for range conns {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(d))
			handle(c)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// TestPassthroughTruncatedResponse: an upstream that dies in the middle of
// its body makes sluice close the client's connection, so the client sees a
// truncated body as an error, not as a whole answer.
func TestPassthroughTruncatedResponse(t *testing.T) {
	// 4 connections: the test makes one request (the pool may retry an idempotent GET).
	up := rawUpstream(t, 4, 5*time.Second, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf) // the request (small, one read is enough on loopback)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 100000))
	})
	addr, _ := startPolicy(t, fmt.Sprintf(streamPolicy, up))
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/files/cut")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Fatalf("read %d bytes of a 1000000-byte answer cut at 100000 without an error", n)
	}
	if n > 100000 {
		t.Fatalf("read %d bytes, the upstream sent 100000", n)
	}
}

// TestPassthroughSmallAnswerCut: a small answer (read whole before the
// client is written to) that the upstream cuts short is answered 502 with a
// JSON error, never passed on as a whole answer; a whole one arrives intact.
func TestPassthroughSmallAnswerCut(t *testing.T) {
	// 8 connections: two requests (the pool may retry an idempotent GET).
	up := rawUpstream(t, 8, 5*time.Second, func(c net.Conn) {
		buf := make([]byte, 4096)
		n, _ := c.Read(buf) // the request (small, one read is enough on loopback)
		if strings.Contains(string(buf[:n]), "/files/whole") {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nX-Up: 1\r\n\r\n"+strings.Repeat("y", 5000))
		} else {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"+strings.Repeat("x", 1000))
		}
	})
	addr, _ := startPolicy(t, fmt.Sprintf(streamPolicy, up))
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/files/cut")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 502 || !strings.Contains(string(body), `"code":"upstream_unreachable"`) || strings.Contains(string(body), "xxx") {
		t.Fatalf("a 5000-byte answer cut at 1000: %d %q (%v)", resp.StatusCode, body, err)
	}
	resp, err = c.Get("http://" + addr + "/files/whole")
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != strings.Repeat("y", 5000) || resp.Header.Get("X-Up") != "1" || resp.ContentLength != 5000 {
		t.Fatalf("a whole 5000-byte answer: %d, %d bytes, X-Up %q (%v)", resp.StatusCode, len(body), resp.Header.Get("X-Up"), err)
	}
}

// TestPassthroughLargeRequest: a 64 MiB request body within the route's
// max_body reaches the upstream intact (streamed; stream_request_test.go
// checks that it is not held in memory).
func TestPassthroughLargeRequest(t *testing.T) {
	const size = 64 << 20
	sums := make(chan [32]byte, 1)
	upAddr := testutil.Serve(t, &fasthttp.Server{
		MaxRequestBodySize: size + 1,
		Handler: func(ctx *fasthttp.RequestCtx) {
			sums <- sha256.Sum256(ctx.PostBody())
			ctx.SetBodyString("ok")
		},
	})
	addr, _ := startPolicy(t, fmt.Sprintf(streamPolicy, upAddr))

	c := &http.Client{Timeout: 60 * time.Second}
	req, err := http.NewRequest("PUT", "http://"+addr+"/files/upload", &patternReader{n: size})
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	select {
	case got := <-sums:
		if want := patternSum(size); got != want {
			t.Fatalf("upstream got a body with hash %x, want %x", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream saw no request")
	}
}
