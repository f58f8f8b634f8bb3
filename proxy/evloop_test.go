package proxy

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// cannedUpstream answers every request on a connection with the next of its
// answers (raw bytes, written as given), and records each request as it
// arrived: request line, header fields sorted, body.
type cannedUpstream struct {
	ln      net.Listener
	mu      sync.Mutex
	answer  string
	got     []string
	accepts int
}

func startCanned(t *testing.T) *cannedUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	u := &cannedUpstream{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.accepts++
			u.mu.Unlock()
			go u.serve(c)
		}
	}()
	return u
}

func (u *cannedUpstream) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for range 100 {
		var req fasthttp.Request
		req.Header.DisableSpecialHeader() // every field as it came, in h.All()
		req.Header.DisableNormalizing()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := req.Read(br); err != nil {
			return
		}
		var lines []string
		for k, v := range req.Header.All() {
			lines = append(lines, string(k)+": "+string(v))
		}
		slices.Sort(lines)
		rec := fmt.Sprintf("%s %s\n%s\n\n%s", req.Header.Method(), req.Header.RequestURI(), strings.Join(lines, "\n"), req.Body())
		u.mu.Lock()
		u.got = append(u.got, rec)
		answer := u.answer
		u.mu.Unlock()
		if _, err := c.Write([]byte(answer)); err != nil {
			return
		}
		if strings.Contains(strings.ToLower(answer), "connection: close") {
			return
		}
	}
}

func (u *cannedUpstream) set(answer string) {
	u.mu.Lock()
	u.answer, u.got = answer, nil
	u.mu.Unlock()
}

func (u *cannedUpstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.got)
}

// exchange sends the raw request on a new connection to addr and returns
// the answer as status line, header fields sorted (Date's value left out)
// and body.
func exchange(t *testing.T, addr, request string, head bool) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	must(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write([]byte(request))
	must(t, err)
	var res fasthttp.Response
	res.SkipBody = head
	res.Header.DisableNormalizing()
	if err := res.Read(bufio.NewReader(c)); err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return describeAnswer(&res)
}

// describeAnswer is an answer as the parity tests compare it: the status
// line, the header fields sorted (Date masked) and the body.
func describeAnswer(res *fasthttp.Response) string {
	var lines []string
	for k, v := range res.Header.All() {
		if strings.EqualFold(string(k), "Date") {
			v = []byte("*")
		}
		lines = append(lines, string(k)+": "+string(v))
	}
	slices.Sort(lines)
	return fmt.Sprintf("%d %s\n%s\n\n%s", res.StatusCode(), res.Header.StatusMessage(), strings.Join(lines, "\n"), res.Body())
}

// TestEventLoopParity sends the same requests, answered the same way by the
// upstream, through sluice served by the event loop and by the fasthttp
// path alone: the upstream must receive the same request and the client the
// same answer (Date's value apart), whichever serves it, including those the
// loop hands to the fasthttp path or streams.
func TestEventLoopParity(t *testing.T) {
	up := startCanned(t)
	policy := func(loops int) string {
		return fmt.Sprintf(`
server: { event_loops: %d }
routes:
  - name: api
    match: { path: /api }
    mode: passthrough
    upstream: http://%s/base
  - name: root
    match: { path: / }
    mode: passthrough
    upstream: http://%s
`, loops, up.ln.Addr(), up.ln.Addr())
	}
	fast, fs := startPolicy(t, policy(1))
	slow, ss := startPolicy(t, policy(0))
	if fs.eventLoops != 1 || ss.eventLoops != 0 {
		t.Fatalf("event loops %d and %d, want 1 and 0", fs.eventLoops, ss.eventLoops)
	}
	ok := func(extra, body string) string {
		return "HTTP/1.1 200 OK\r\n" + extra + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
	}
	big := strings.Repeat("x", 100<<10)
	cases := []struct {
		name, req, answer string
		head              bool
	}{
		{"post", "POST /orders HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
			ok("Content-Type: application/json\r\nX-Up: 1\r\n", `{"ok":true}`), false},
		{"get", "GET /orders?id=7&x=%7E HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\r\n", ok("Content-Type: text/plain\r\n", "seven"), false},
		{"lower-case names", "POST /o HTTP/1.1\r\nhost: shop.example\r\nx-request-id: abc\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nhi",
			ok("x-lower: yes\r\ncontent-type: text/plain\r\n", "ok"), false},
		{"hop-by-hop", "POST /o HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\nX-End: 2\r\nContent-Length: 1\r\n\r\nz",
			ok("Connection: X-Gone\r\nX-Gone: 1\r\nKeep-Alive: timeout=3\r\nX-Stays: 1\r\n", "ok"), false},
		{"forwarded", "GET /o HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n", ok("", "ok"), false},
		{"base path", "GET /api/v1/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", ok("", "based"), false},
		{"dot segments", "GET /a/./b/../c//d HTTP/1.1\r\nHost: h\r\n\r\n", ok("", "norm"), false},
		{"no content type", "POST /o HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", ok("", "untyped"), false},
		{"empty answer", "DELETE /o/1 HTTP/1.1\r\nHost: h\r\n\r\n", ok("", ""), false},
		{"204", "DELETE /o/2 HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false},
		{"304", "GET /o HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"e\"\r\n\r\n", "HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n", false},
		{"head", "HEAD /o HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\r\n", true},
		{"upstream closes", "GET /o HTTP/1.1\r\nHost: h\r\n\r\n", ok("Connection: close\r\n", "bye"), false},
		{"client closes", "GET /o HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", ok("", "bye"), false},
		{"server named", "GET /o HTTP/1.1\r\nHost: h\r\n\r\n", ok("Server: upstream/1.0\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n", "named"), false},
		{"reason phrase", "GET /o HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 418 Short And Stout\r\nContent-Length: 3\r\n\r\ntea", false},
		{"error status", "POST /o HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy", false},
		{"chunked answer", "GET /o HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", false},
		{"large answer", "GET /o HTTP/1.1\r\nHost: h\r\n\r\n", ok("Content-Type: text/plain\r\n", big), false},
		{"http/1.0 answer", "GET /o HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", false},
		{"chunked request", "POST /o HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", ok("", "took"), false},
		{"http/1.0 request", "GET /o HTTP/1.0\r\nHost: h\r\n\r\n", ok("", "one-oh"), false},
		{"large request", "POST /o HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n" + strings.Repeat("y", 70000), ok("", "big"), false},
		{"cookie", "GET /o HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=2\r\n\r\n", ok("Set-Cookie: c=3; Path=/\r\n", "c"), false},
		{"status path", "GET /_sluice/v1/messages/x HTTP/1.1\r\nHost: h\r\n\r\n", ok("", "never"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up.set(tc.answer)
			slowAns := exchange(t, slow, tc.req, tc.head)
			slowReqs := up.requests()
			up.set(tc.answer)
			fastAns := exchange(t, fast, tc.req, tc.head)
			fastReqs := up.requests()
			if fastAns != slowAns {
				t.Errorf("answer through the event loop:\n%s\nthrough fasthttp:\n%s", fastAns, slowAns)
			}
			if !slices.Equal(fastReqs, slowReqs) {
				t.Errorf("upstream got through the event loop:\n%q\nthrough fasthttp:\n%q", fastReqs, slowReqs)
			}
		})
	}
}
