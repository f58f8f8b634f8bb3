package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
)

// sinkResult is what the sink upstream saw of one request.
type sinkResult struct {
	n      int64 // body bytes read
	sum    [32]byte
	err    error // reading the body
	cl     int   // Content-Length as received; -1: chunked
	host   string
	xff    string
	xfp    string
	hop    string // X-Hop, which the client named in Connection
	accept string
}

// complete reports whether the sink got a whole body: a chunked one with its
// last chunk, a Content-Length one with all its bytes.
func (r sinkResult) complete() bool {
	return r.err == nil && (r.cl < 0 || r.n == int64(r.cl))
}

// startSink runs an upstream that streams each request body into a hash (so
// it holds none of it either) and answers "<bytes> <sha256 hex>".
func startSink(t *testing.T) (addr string, results chan sinkResult) {
	t.Helper()
	results = make(chan sinkResult, 16)
	addr = testutil.Serve(t, &fasthttp.Server{
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		ReadTimeout:                  60 * time.Second,
		Handler: func(ctx *fasthttp.RequestCtx) {
			h := sha256.New()
			var res sinkResult
			if s := ctx.RequestBodyStream(); s != nil {
				res.n, res.err = io.Copy(h, s)
			} else {
				b := ctx.PostBody()
				h.Write(b)
				res.n = int64(len(b))
			}
			h.Sum(res.sum[:0])
			res.cl = ctx.Request.Header.ContentLength()
			res.host = string(ctx.Host())
			res.xff = string(ctx.Request.Header.Peek("X-Forwarded-For"))
			res.xfp = string(ctx.Request.Header.Peek("X-Forwarded-Proto"))
			res.hop = string(ctx.Request.Header.Peek("X-Hop"))
			res.accept = string(ctx.Request.Header.Peek("Accept"))
			select {
			case results <- res:
			default:
			}
			if !res.complete() {
				ctx.SetStatusCode(fasthttp.StatusBadRequest)
				return
			}
			fmt.Fprintf(ctx, "%d %x", res.n, res.sum)
		},
	})
	return addr, results
}

func nextResult(t *testing.T, results chan sinkResult) sinkResult {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("the upstream saw no request")
	}
	return sinkResult{}
}

const uploadPolicy = `
server: { read_timeout: %s }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    max_body: 1MiB
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
  - name: files
    match: { path: /files/ }
    mode: passthrough
    upstream: http://%s
  - name: small
    match: { path: /small/ }
    mode: passthrough
    upstream: http://%s
    max_body: 1MiB
`

func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// TestPassthroughStreamsLargeUpload sends a 64 MiB body through a passthrough
// route with no max_body (unlimited by default), once with Content-Length and
// once chunked. The upstream gets exactly the bytes, framed as sent, with the
// usual proxy headers; and the process (client, sluice and upstream, all of
// which stream) neither holds nor allocates anything near the body's size.
func TestPassthroughStreamsLargeUpload(t *testing.T) {
	const size = 64 << 20
	sink, results := startSink(t)
	addr, _ := startPolicy(t, fmt.Sprintf(uploadPolicy, "30s", sink, sink))
	want := patternSum(size)
	c := &http.Client{Timeout: 60 * time.Second}

	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			req, err := http.NewRequest("PUT", "http://"+addr+"/files/upload", &patternReader{n: size})
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = size
			if chunked {
				req.ContentLength = -1
			}
			req.Header.Set("Connection", "X-Hop")
			req.Header.Set("X-Hop", "secret")
			req.Header.Set("Accept", "text/plain")

			base := heapInuse()
			alloc0 := totalAlloc()
			stop := heapPeak()
			resp, err := c.Do(req)
			if err != nil {
				stop()
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			peak := stop()
			allocated := totalAlloc() - alloc0
			if resp.StatusCode != 200 || string(body) != fmt.Sprintf("%d %x", size, want) {
				t.Fatalf("status %d: %q", resp.StatusCode, body)
			}
			got := nextResult(t, results)
			wantCL := size
			if chunked {
				wantCL = -1
			}
			if !got.complete() || got.n != size || got.sum != want || got.cl != wantCL {
				t.Fatalf("upstream got %d bytes (Content-Length %d, err %v), want %d (Content-Length %d)", got.n, got.cl, got.err, size, wantCL)
			}
			if got.host != sink || got.xff != "127.0.0.1" || got.xfp != "http" || got.hop != "" || got.accept != "text/plain" {
				t.Fatalf("upstream saw Host %q, X-Forwarded-For %q, X-Forwarded-Proto %q, X-Hop %q, Accept %q", got.host, got.xff, got.xfp, got.hop, got.accept)
			}
			// Held whole anywhere, the body would add 64 MiB to the heap
			// (up to 128 MiB with the doubling of a growing buffer) and to
			// the allocations; streamed, both stay at the size of the
			// buffers on the way.
			grew := int64(peak) - int64(base)
			t.Logf("heap in use: %d MiB before, peak %d MiB; %d MiB allocated during the upload", base>>20, peak>>20, allocated>>20)
			if grew > 24<<20 {
				t.Fatalf("heap grew by %d MiB while a %d MiB body passed through", grew>>20, size>>20)
			}
			if allocated > 32<<20 {
				t.Fatalf("%d MiB allocated while a %d MiB body passed through", allocated>>20, size>>20)
			}
		})
	}
}

// rawConn opens a connection to addr with a deadline on everything.
func rawConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// answer reads one response from c: "<status> <body>", or "closed: <err>"
// when the connection ended without one.
func answer(c net.Conn) string {
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "closed: " + err.Error()
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Sprintf("%d (body cut: %v)", resp.StatusCode, err)
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

// TestPassthroughUploadLimits: a passthrough route's max_body (1 MiB here).
func TestPassthroughUploadLimits(t *testing.T) {
	sink, results := startSink(t)
	addr, s := startPolicy(t, fmt.Sprintf(uploadPolicy, "10s", sink, sink))
	c := &http.Client{Timeout: 30 * time.Second}

	t.Run("Content-Length over max_body: 413 before the body is sent", func(t *testing.T) {
		for _, hdr := range []string{"", "Expect: 100-continue\r\n"} {
			got := raw(t, addr, "PUT /small/x HTTP/1.1\r\nHost: x\r\n"+hdr+"Content-Length: 2000000\r\n\r\n")
			if !strings.HasPrefix(got, `413 {"error":{"code":"body_too_large"`) {
				t.Fatalf("%q: got %q", hdr, got)
			}
		}
	})

	t.Run("chunked over max_body: upstream request aborted, 413 or closed", func(t *testing.T) {
		conn := rawConn(t, addr)
		go func() { // the client keeps sending; sluice stops reading at 1 MiB
			w := bufio.NewWriter(conn)
			io.WriteString(w, "PUT /small/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
			chunk := bytes.Repeat([]byte("c"), 64<<10)
			for range 64 { // 4 MiB
				fmt.Fprintf(w, "%x\r\n%s\r\n", len(chunk), chunk)
				if w.Flush() != nil {
					return
				}
			}
			io.WriteString(w, "0\r\n\r\n")
			w.Flush()
		}()
		got := answer(conn)
		if !strings.HasPrefix(got, `413 {"error":{"code":"body_too_large"`) && !strings.HasPrefix(got, "closed: ") {
			t.Fatalf("got %q, want 413 or a closed connection", got)
		}
		r := nextResult(t, results)
		if r.complete() || r.err == nil {
			t.Fatalf("the upstream took %d bytes as a whole body", r.n)
		}
		if r.n > 1<<20 {
			t.Fatalf("the upstream got %d bytes, more than max_body", r.n)
		}
		t.Logf("client: %.60q; upstream: %d bytes, %v", got, r.n, r.err)
	})

	for _, tc := range []struct {
		name    string
		size    int64
		chunked bool
	}{
		{"small whole", 1000, false},
		{"empty", 0, false},
		{"streamed, within max_body", 900 << 10, false},
		{"chunked, within max_body", 1 << 20, true},
		{"chunked, small", 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src io.Reader = &patternReader{n: tc.size}
			if tc.size == 0 {
				src = http.NoBody // else net/http sends an unknown length chunked
			}
			req, _ := http.NewRequest("POST", "http://"+addr+"/small/x", src)
			req.ContentLength = tc.size
			if tc.chunked {
				req.ContentLength = -1
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := patternSum(tc.size)
			if resp.StatusCode != 200 || string(body) != fmt.Sprintf("%d %x", tc.size, want) {
				t.Fatalf("status %d: %q", resp.StatusCode, body)
			}
			r := nextResult(t, results)
			if r.n != tc.size || r.sum != want || (r.cl < 0) != tc.chunked {
				t.Fatalf("upstream got %d bytes, Content-Length %d", r.n, r.cl)
			}
		})
	}
	if n := s.testQueue("orders").Stats().Appended; n != 0 {
		t.Fatalf("%d stored", n)
	}
}

// TestPassthroughUpstreamDiesMidUpload: an upstream that reads part of a
// large upload and closes its connection. The client gets 502 or a closed
// connection, in bounded time, and sluice goes on serving.
func TestPassthroughUpstreamDiesMidUpload(t *testing.T) {
	accepted := make(chan int64, 4)
	// 4 connections: the test makes two requests.
	up := rawUpstream(t, 4, 10*time.Second, func(c net.Conn) {
		n, _ := io.CopyN(io.Discard, c, 1<<20) // headers and some of the body
		accepted <- n
	})
	addr, _ := startPolicy(t, fmt.Sprintf(uploadPolicy, "10s", up, up))
	c := &http.Client{Timeout: 30 * time.Second}
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			const size = 64 << 20
			req, _ := http.NewRequest("PUT", "http://"+addr+"/files/upload", &patternReader{n: size})
			req.ContentLength = size
			if chunked {
				req.ContentLength = -1
			}
			start := time.Now()
			resp, err := c.Do(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 502 || !strings.Contains(string(body), `"upstream_unreachable"`) {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
			}
			t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
			select {
			case n := <-accepted:
				if n < 1<<20 {
					t.Fatalf("the upstream read only %d bytes", n)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream saw no connection")
			}
		})
	}
	if r := do(t, "GET", "http://"+addr+StatusPrefix+"nope", "", nil); r.StatusCode() != 400 {
		t.Fatalf("status API after the failed uploads: %d %s", r.StatusCode(), r.Body())
	}
}

// TestPassthroughUploadProgress: with read_timeout 500ms, an upload that
// keeps moving may take longer than read_timeout, while one that stalls is
// cut (408 or a closed connection) and its upstream request aborted.
func TestPassthroughUploadProgress(t *testing.T) {
	sink, results := startSink(t)
	addr, _ := startPolicy(t, fmt.Sprintf(uploadPolicy, "500ms", sink, sink))
	piece := bytes.Repeat([]byte("p"), progressBytes)

	t.Run("moving", func(t *testing.T) {
		const pieces = 20 // about 1.2s in all, a piece every 60ms
		conn := rawConn(t, addr)
		go func() {
			fmt.Fprintf(conn, "PUT /files/slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", pieces*len(piece))
			for range pieces {
				if _, err := conn.Write(piece); err != nil {
					return
				}
				time.Sleep(60 * time.Millisecond)
			}
		}()
		want := sha256.Sum256(bytes.Repeat(piece, pieces))
		if got := answer(conn); got != fmt.Sprintf("200 %d %x", pieces*len(piece), want) {
			t.Fatalf("got %.200q", got)
		}
		if r := nextResult(t, results); !r.complete() {
			t.Fatalf("upstream: %d bytes, %v", r.n, r.err)
		}
	})

	t.Run("stalled", func(t *testing.T) {
		conn := rawConn(t, addr)
		fmt.Fprintf(conn, "PUT /files/slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 10*len(piece))
		conn.Write(piece)
		conn.Write(piece) // then nothing
		start := time.Now()
		got := answer(conn)
		if !strings.HasPrefix(got, `408 {"error":{"code":"timeout"`) && !strings.HasPrefix(got, "closed: ") {
			t.Fatalf("got %q, want 408 or a closed connection", got)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("answered after %v", d)
		}
		if r := nextResult(t, results); r.complete() {
			t.Fatalf("the upstream took %d bytes as a whole body", r.n)
		}
	})
}

// TestProgressConn: the write deadline moves with each write, so a steady
// writer outlives the timeout, and a peer that stops reading ends the writes.
func TestProgressConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan net.Conn, 2)
	go func() {
		for range 2 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peers <- c
		}
	}()
	dial := func() (*progressConn, net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		select {
		case p := <-peers:
			t.Cleanup(func() { p.Close() })
			return newProgressConn(c, 200*time.Millisecond), p
		case <-time.After(5 * time.Second):
			t.Fatal("no accept")
		}
		return nil, nil
	}

	pc, peer := dial()
	go io.Copy(io.Discard, peer)
	start := time.Now()
	buf := make([]byte, 1000)
	for time.Since(start) < 600*time.Millisecond { // three timeouts' worth
		if _, err := pc.Write(buf); err != nil {
			t.Fatalf("steady writes failed after %v: %v", time.Since(start), err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	pc, _ = dial() // this peer never reads
	buf = make([]byte, 64<<10)
	start = time.Now()
	for i := 0; ; i++ {
		_, err := pc.Write(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("want a timeout, got %v", err)
			}
			break
		}
		if i > 16<<10 || time.Since(start) > 10*time.Second { // 1 GiB: no socket buffer is that large
			t.Fatal("writes to a peer that does not read never failed")
		}
	}
}

// TestBufferedBodiesWhole: buffer routes still read the body whole and
// store it byte for byte, however it is framed, and keep the connection.
// TestBufferedBodiesWhole runs with streamed request bodies (the policy has
// passthrough routes) and without (it has none): a buffered route stores the
// same bytes and refuses the same bodies either way.
func TestBufferedBodiesWhole(t *testing.T) {
	sink, _ := startSink(t)
	t.Run("streaming", func(t *testing.T) {
		addr, s := startPolicy(t, fmt.Sprintf(uploadPolicy, "10s", sink, sink))
		if !s.srv.StreamRequestBody {
			t.Fatal("a policy with passthrough routes should stream request bodies")
		}
		testBufferedBodiesWhole(t, addr, s)
	})
	t.Run("not streaming", func(t *testing.T) {
		addr, s := startPolicy(t, `
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    max_body: 1MiB
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
`)
		if s.srv.StreamRequestBody {
			t.Fatal("a policy without passthrough routes should not stream request bodies")
		}
		testBufferedBodiesWhole(t, addr, s)
	})
}

func testBufferedBodiesWhole(t *testing.T, addr string, s *Server) {
	q := s.testQueue("orders")
	hc := &fasthttp.HostClient{Addr: addr, MaxConns: 1} // one connection, kept alive

	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("b", "2")
	fw, _ := mw.CreateFormFile("a", "x.png")
	fw.Write(bytes.Repeat([]byte{0x89, 'P', 'N', 'G'}, 5000))
	mw.Close()

	stored := func(resp *fasthttp.Response) []byte {
		t.Helper()
		if resp.StatusCode() != 202 {
			t.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
		}
		id, err := buffer.ParseID(string(resp.Header.Peek("X-Sluice-Id")))
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := q.Lookup(id)
		if err != nil {
			t.Fatal(err)
		}
		return m.Body
	}
	for _, tc := range []struct {
		name, ctype string
		body        []byte
		chunked     bool
	}{
		{"small", "application/json", []byte(`{"a":1}`), false},
		{"empty", "application/json", nil, false},
		{"8 KiB", "application/octet-stream", bytes.Repeat([]byte("8"), 8<<10), false},
		{"just over 8 KiB", "application/octet-stream", bytes.Repeat([]byte("9"), 8<<10+1), false},
		{"200 KiB", "application/octet-stream", bytes.Repeat([]byte("x"), 200<<10), false},
		{"1 MiB exactly", "application/octet-stream", bytes.Repeat([]byte("m"), 1<<20), false},
		{"chunked 300 KiB", "application/octet-stream", bytes.Repeat([]byte("y"), 300<<10), true},
		{"chunked 1 MiB exactly", "application/octet-stream", bytes.Repeat([]byte("z"), 1<<20), true},
		{"chunked empty", "application/octet-stream", nil, true},
		{"multipart, byte for byte", mw.FormDataContentType(), mp.Bytes(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // twice on the same connection
				req := fasthttp.AcquireRequest()
				defer fasthttp.ReleaseRequest(req)
				resp := fasthttp.AcquireResponse()
				defer fasthttp.ReleaseResponse(resp)
				req.Header.SetMethod("POST")
				req.SetRequestURI("http://" + addr + "/api/orders")
				req.Header.SetContentType(tc.ctype)
				if tc.chunked {
					req.SetBodyStream(bytes.NewReader(tc.body), -1)
				} else {
					req.SetBody(tc.body)
				}
				if err := hc.DoTimeout(req, resp, 10*time.Second); err != nil {
					t.Fatal(err)
				}
				if got := stored(resp); !bytes.Equal(got, tc.body) {
					t.Fatalf("stored %d bytes, sent %d (equal prefix: %v)", len(got), len(tc.body), bytes.HasPrefix(tc.body, got))
				}
			}
		})
	}
	before := q.Stats().Appended
	for _, req := range []string{
		"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n" + strings.Repeat("x", 1<<20+1) + "\r\n0\r\n\r\n",
		"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n80000\r\n" + strings.Repeat("x", 1<<19) + "\r\n80001\r\n" + strings.Repeat("x", 1<<19+1) + "\r\n0\r\n\r\n",
		"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
	} {
		if got := raw(t, addr, req); !strings.HasPrefix(got, `413 {"error":{"code":"body_too_large"`) {
			t.Fatalf("got %q", got)
		}
	}
	conn := rawConn(t, addr) // a body cut short: the client stops sending
	io.WriteString(conn, "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("s", 50000))
	conn.(*net.TCPConn).CloseWrite()
	if got := answer(conn); !strings.HasPrefix(got, `400 {"error":{"code":"bad_request"`) {
		t.Fatalf("a body cut short: %q", got)
	}
	if n := q.Stats().Appended; n != before {
		t.Fatalf("%d stored by refused requests", n-before)
	}
}
