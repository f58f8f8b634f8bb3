package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
)

// echoUpstream answers each request with its method, URI and body, after
// delay.
func echoUpstream(t *testing.T, delay time.Duration) string {
	t.Helper()
	return testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		time.Sleep(delay)
		fmt.Fprintf(ctx, "%s %s %s", ctx.Method(), ctx.RequestURI(), ctx.PostBody())
	}})
}

const loopPolicy = `
server: { event_loops: %d, read_timeout: 2s }
routes:
  - name: api
    match: { path: / }
    mode: passthrough
    upstream: http://%s
    timeout: %s
`

// dialLoop connects to addr, with a deadline of 10s for the test's exchange.
func dialLoop(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// readAnswers reads n answers from br.
func readAnswers(t *testing.T, br *bufio.Reader, n int) []string {
	t.Helper()
	var out []string
	for range n {
		var res fasthttp.Response
		if err := res.Read(br); err != nil {
			t.Fatalf("answer %d of %d: %v", len(out)+1, n, err)
		}
		out = append(out, fmt.Sprintf("%d %s", res.StatusCode(), res.Body()))
	}
	return out
}

func TestEventLoopPipelined(t *testing.T) {
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 1, echoUpstream(t, 0), "5s"))
	c, br := dialLoop(t, addr)
	_, err := c.Write([]byte("GET /a HTTP/1.1\r\nHost: h\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz" +
		"GET /c?d=1 HTTP/1.1\r\nHost: h\r\n\r\n"))
	must(t, err)
	got := readAnswers(t, br, 3)
	want := []string{"200 GET /a ", "200 POST /b xyz", "200 GET /c?d=1 "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("pipelined answers %q, want %q", got, want)
	}
	if lc := s.LoopCounts(); lc.Relayed != 3 || lc.HandedOver != 0 {
		t.Fatalf("relayed %d, handed over %d: want 3 and 0", lc.Relayed, lc.HandedOver)
	}
}

// A request that arrives in pieces is put together by the loop.
func TestEventLoopSplitRequest(t *testing.T) {
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 1, echoUpstream(t, 0), "5s"))
	c, br := dialLoop(t, addr)
	for _, piece := range []string{"POST /split HT", "TP/1.1\r\nHost: h\r\nContent-Le", "ngth: 6\r\n\r\n", "abc", "def"} {
		_, err := c.Write([]byte(piece))
		must(t, err)
		time.Sleep(20 * time.Millisecond)
	}
	if got := readAnswers(t, br, 1); got[0] != "200 POST /split abcdef" {
		t.Fatalf("answer %q", got[0])
	}
	if lc := s.LoopCounts(); lc.Relayed != 1 || lc.HandedOver != 0 {
		t.Fatalf("relayed %d, handed over %d: want 1 and 0", lc.Relayed, lc.HandedOver)
	}
}

// A request the loop does not relay itself hands the connection to the
// fasthttp server, which serves it and what follows on it.
func TestEventLoopHandsOver(t *testing.T) {
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 1, echoUpstream(t, 0), "5s"))
	c, br := dialLoop(t, addr)
	_, err := c.Write([]byte("GET /first HTTP/1.1\r\nHost: h\r\n\r\n"))
	must(t, err)
	_ = readAnswers(t, br, 1)
	_, err = c.Write([]byte("POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"))
	must(t, err)
	got := readAnswers(t, br, 2)
	if got[0] != "200 POST /chunked abc" || got[1] != "200 GET /after " {
		t.Fatalf("answers %q", got)
	}
	if lc := s.LoopCounts(); lc.Relayed != 1 || lc.HandedOver != 1 {
		t.Fatalf("relayed %d, handed over %d: want 1 and 1", lc.Relayed, lc.HandedOver)
	}
}

func TestEventLoopUpstreamTimeout(t *testing.T) {
	bh := startBlackHole(t)
	addr, _ := startPolicy(t, fmt.Sprintf(loopPolicy, 1, bh.addr, "300ms"))
	start := time.Now()
	r := do(t, "POST", "http://"+addr+"/slow", "x", nil)
	if r.StatusCode() != 504 || !strings.Contains(string(r.Body()), `"upstream_timeout"`) {
		t.Fatalf("answer %d %s, want 504 upstream_timeout", r.StatusCode(), r.Body())
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 3*time.Second {
		t.Fatalf("answered after %v; the route's timeout is 300ms", el)
	}
	if n := bh.requests.Load(); n != 1 {
		t.Fatalf("upstream got %d requests, want 1 (a timeout is never resent)", n)
	}
}

// Shutdown lets a request in flight finish, with Connection: close.
func TestEventLoopShutdownFinishesInFlight(t *testing.T) {
	s, _ := newTestServer(t, fmt.Sprintf(loopPolicy, 1, echoUpstream(t, 400*time.Millisecond), "5s"), buffer.Config{}, nil)
	addr, c, served := serveOne(t, s, "POST /inflight HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
	time.Sleep(100 * time.Millisecond) // with the upstream now
	shut := shutdownLater(s)
	var res fasthttp.Response
	if err := res.Read(bufio.NewReader(c)); err != nil {
		t.Fatalf("answer of the request in flight: %v", err)
	}
	if res.StatusCode() != 200 || string(res.Body()) != "POST /inflight ok" || !res.ConnectionClose() {
		t.Fatalf("answer %d %q (Connection: close %v)", res.StatusCode(), res.Body(), res.ConnectionClose())
	}
	select {
	case err := <-shut:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

// serveOne serves s on a new listener, dials it and sends request on that
// connection (reads and writes time out after 10 s): for the shutdown
// tests. served gets Serve's result.
func serveOne(t *testing.T, s *Server, request string) (addr string, c net.Conn, served <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	c, err = net.Dial("tcp", ln.Addr().String())
	must(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write([]byte(request))
	must(t, err)
	return ln.Addr().String(), c, done
}

// shutdownLater shuts s down (within 5 s) on another goroutine, which sends
// Shutdown's result.
func shutdownLater(s *Server) <-chan error {
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	return shut
}

// Many clients on two loops, each request's answer on its own connection:
// no answer goes to another client, none is lost.
func TestEventLoopManyClients(t *testing.T) {
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 2, echoUpstream(t, 0), "5s"))
	const clients, each = 40, 25
	exchangeMany(t, addr, clients, each, func(i, j int) (string, string) {
		body := fmt.Sprintf("client %d request %d", i, j)
		return fmt.Sprintf("POST /c%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", i, len(body), body),
			fmt.Sprintf("200 POST /c%d %s", i, body)
	})
	if lc := s.LoopCounts(); lc.Relayed != clients*each || lc.HandedOver != 0 {
		t.Fatalf("relayed %d, handed over %d: want %d and 0", lc.Relayed, lc.HandedOver, clients*each)
	}
}

// A client that half-closes after its request and then resets its
// connection while the answer is pending is let go at once: its socket is
// reported hung up at every wake-up, and must not keep the loop spinning.
func TestEventLoopClientResetWhileWaiting(t *testing.T) {
	addr, _ := startPolicy(t, fmt.Sprintf(loopPolicy, 1, echoUpstream(t, 1500*time.Millisecond), "5s"))
	c, err := net.Dial("tcp", addr)
	must(t, err)
	_, err = c.Write([]byte("POST /gone HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx"))
	must(t, err)
	must(t, c.(*net.TCPConn).CloseWrite())
	time.Sleep(100 * time.Millisecond) // the loop has read the end of the request side
	must(t, c.(*net.TCPConn).SetLinger(0))
	c.Close() // a reset
	before := testutil.CPUTime()
	time.Sleep(time.Second)
	if used := testutil.CPUTime() - before; used > 400*time.Millisecond {
		t.Fatalf("the process used %v of CPU in the second after the reset: the loop spins on the hung-up socket", used)
	}
}

// Many clients on two loops mix every kind of request the loops relay or
// hand over (small, chunked, large, pipelined, the status API, a buffer
// route), against an upstream that sometimes answers chunked or large and
// sometimes drops the connection: each client gets its own answers, in
// order, each either right or a JSON 502, and the race detector watches the
// loops, their streams and the fasthttp server together.
func TestEventLoopMixedSoak(t *testing.T) {
	var drops sync.Map
	up := testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		path := string(ctx.Path())
		switch {
		case strings.HasSuffix(path, "/drop"):
			if _, seen := drops.LoadOrStore(path, true); !seen {
				ctx.HijackSetNoResponse(true)
				ctx.Hijack(func(c net.Conn) {}) // closed without an answer, once
				return
			}
		case strings.HasSuffix(path, "/chunked"):
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) { fmt.Fprintf(w, "%s %s", ctx.Method(), path); w.Flush() })
			return
		case strings.HasSuffix(path, "/large"):
			ctx.SetBody([]byte(strings.Repeat("L", 70<<10)))
			return
		}
		fmt.Fprintf(ctx, "%s %s %d", ctx.Method(), path, len(ctx.PostBody()))
	}})
	addr, _ := startPolicy(t, fmt.Sprintf(`
server: { event_loops: 2, read_timeout: 5s }
routes:
  - name: stored
    match: { path: /stored }
    targets: [{ name: t, url: "http://127.0.0.1:1", rate: 0 }]
  - name: api
    match: { path: / }
    mode: passthrough
    upstream: http://%s
    timeout: 5s
`, up))
	exchangeMany(t, addr, 24, 30, func(i, j int) (req, want string) {
		p := fmt.Sprintf("/c%d/r%d", i, j)
		switch (i + j) % 7 {
		case 0:
			return "POST " + p + " HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", "200 POST " + p + " 5"
		case 1:
			return "POST " + p + " HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "200 POST " + p + " 3"
		case 2:
			return "GET " + p + "/chunked HTTP/1.1\r\nHost: h\r\n\r\n", "200 GET " + p + "/chunked"
		case 3:
			return "GET " + p + "/large HTTP/1.1\r\nHost: h\r\n\r\n", "200 " + strings.Repeat("L", 70<<10)
		case 4:
			body := strings.Repeat("B", 70<<10)
			return "PUT " + p + " HTTP/1.1\r\nHost: h\r\nContent-Length: 71680\r\n\r\n" + body, "200 PUT " + p + " 71680"
		case 5:
			return "POST " + p + "/drop HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", "502"
		}
		return "GET /_sluice/v1/messages/nope HTTP/1.1\r\nHost: h\r\n\r\n", "400"
	})
}

// exchangeMany runs clients connections to addr at once, each sending
// each requests one after another; exchange(i, j) gives client i's j-th
// request and the answer it must get: "status body", or only a status.
func exchangeMany(t *testing.T, addr string, clients, each int, exchange func(i, j int) (req, want string)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(c)
			for j := range each {
				req, want := exchange(i, j)
				if _, err := c.Write([]byte(req)); err != nil {
					errs <- fmt.Errorf("client %d request %d: %v", i, j, err)
					return
				}
				var res fasthttp.Response
				if err := res.Read(br); err != nil {
					errs <- fmt.Errorf("client %d request %d: %v", i, j, err)
					return
				}
				got := fmt.Sprintf("%d %s", res.StatusCode(), res.Body())
				if got != want && (len(want) != 3 || !strings.HasPrefix(got, want+" ")) {
					errs <- fmt.Errorf("client %d request %d: got %.80q, want %.80q", i, j, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A client that pipelines requests for large answers and does not read
// them at first fills its socket (200 answers of 60 KiB: more than the
// loopback's buffers hold): the loop keeps what it could not write, waits
// until the socket drains, and every answer arrives whole and in order.
func TestEventLoopSlowReader(t *testing.T) {
	const size = 60 << 10 // relayed by the loop (up to 64 KiB)
	up := testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetBody(bytes.Repeat(ctx.Path()[1:2], size))
	}})
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 1, up, "5s"))
	c, err := net.Dial("tcp", addr)
	must(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	const n = 200
	var reqs strings.Builder
	for i := range n {
		fmt.Fprintf(&reqs, "GET /%c HTTP/1.1\r\nHost: h\r\n\r\n", 'a'+i%26)
	}
	go c.Write([]byte(reqs.String()))
	time.Sleep(500 * time.Millisecond) // the loop meets a full socket
	br := bufio.NewReader(c)
	for i := range n {
		var res fasthttp.Response
		if err := res.Read(br); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if want := bytes.Repeat([]byte{byte('a' + i%26)}, size); res.StatusCode() != 200 || !bytes.Equal(res.Body(), want) {
			t.Fatalf("answer %d: %d, %d bytes, not %d of %q", i, res.StatusCode(), len(res.Body()), size, string(rune('a'+i%26)))
		}
	}
	if lc := s.LoopCounts(); lc.Relayed != n || lc.HandedOver != 0 {
		t.Fatalf("relayed %d, handed over %d: want %d and 0", lc.Relayed, lc.HandedOver, n)
	}
}

// An upstream slow to read (a small receive buffer, its first read after
// 300 ms) still gets the whole 60 KiB request, and its answer is relayed.
func TestEventLoopSlowUpstreamReader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	got := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(4096)
		time.Sleep(300 * time.Millisecond) // the proxy meets a full socket
		var req fasthttp.Request
		if err := req.Read(bufio.NewReaderSize(c, 512)); err != nil {
			got <- -1
			return
		}
		got <- len(req.Body())
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	}()
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 1, ln.Addr().String(), "5s"))
	body := strings.Repeat("u", 60<<10)
	r := do(t, "POST", "http://"+addr+"/upload", body, nil)
	if r.StatusCode() != 200 || string(r.Body()) != "ok" {
		t.Fatalf("answer %d %q", r.StatusCode(), r.Body())
	}
	if n := <-got; n != len(body) {
		t.Fatalf("upstream got %d bytes of body, want %d", n, len(body))
	}
	if lc := s.LoopCounts(); lc.Relayed != 1 {
		t.Fatalf("relayed %d, want 1", lc.Relayed)
	}
}

// A chunked answer that has all come is relayed by the loop; one still
// coming (a stream: server-sent events, progress) goes out as it comes,
// its first chunk before the rest is sent.
func TestEventLoopChunkedAnswers(t *testing.T) {
	up := testutil.ServeRaw(t, func(c net.Conn, req *fasthttp.Request) bool {
		if string(req.URI().Path()) == "/stream" {
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n"))
			time.Sleep(400 * time.Millisecond)
			c.Write([]byte("5\r\nlast\n\r\n0\r\n\r\n"))
			return true
		}
		c.Write([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nwhole\r\n0\r\n\r\n"))
		return true
	})
	addr, s := startPolicy(t, fmt.Sprintf(loopPolicy, 1, up, "5s"))
	c, br := dialLoop(t, addr)
	_, err := c.Write([]byte("GET /whole HTTP/1.1\r\nHost: h\r\n\r\n"))
	must(t, err)
	if got := readAnswers(t, br, 1); got[0] != "200 whole" {
		t.Fatalf("whole chunked answer: %q", got[0])
	}
	if lc := s.LoopCounts(); lc.Relayed != 1 || lc.Streamed != 0 {
		t.Fatalf("relayed %d, streamed %d: want 1 and 0", lc.Relayed, lc.Streamed)
	}
	c2, br2 := dialLoop(t, addr)
	start := time.Now()
	_, err = c2.Write([]byte("GET /stream HTTP/1.1\r\nHost: h\r\n\r\n"))
	must(t, err)
	var res fasthttp.Response
	res.StreamBody = true
	must(t, res.Read(br2))
	first := make([]byte, 6)
	_, err = io.ReadFull(res.BodyStream(), first)
	must(t, err)
	if el := time.Since(start); string(first) != "first\n" || el > 300*time.Millisecond {
		t.Fatalf("first chunk %q after %v: want it before the upstream's pause ends (400ms)", first, el)
	}
	rest, _ := io.ReadAll(res.BodyStream())
	if string(rest) != "last\n" {
		t.Fatalf("rest of the stream %q", rest)
	}
	if lc := s.LoopCounts(); lc.Streamed != 1 {
		t.Fatalf("streamed %d, want 1", lc.Streamed)
	}
}
