package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
)

// startPolicy runs a Server for the policy text on a loopback listener.
func startPolicy(t *testing.T, text string) (addr string, s *Server) {
	t.Helper()
	return startPolicyWith(t, text, nil)
}

// startPolicyWith is startPolicy with the Server's Config changed by edit.
func startPolicyWith(t *testing.T, text string, edit func(*Config)) (addr string, s *Server) {
	t.Helper()
	s, _ = newTestServer(t, text, buffer.Config{}, edit)
	return listen(t, s), s
}

// startUpstream runs an upstream that records what it receives and
// answers 200 "from upstream".
func startUpstream(t *testing.T) *testutil.Upstream {
	t.Helper()
	return testutil.StartUpstream(t, testutil.Answer(200, "from upstream"))
}

// raw sends data on a new connection and returns everything read until the
// server closes it or 5s pass.
func raw(t *testing.T, addr, data string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, data)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "no response: " + err.Error()
	}
	body, _ := io.ReadAll(resp.Body)
	return strconv.Itoa(resp.StatusCode) + " " + string(body)
}

const hostilePolicy = `
server: { read_timeout: 300ms, max_header_bytes: 2KiB }
default_upstream: http://%s
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    max_body: 1KiB
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
  - name: catalog
    match: { path: /api/catalog }
    mode: passthrough
    upstream: http://%s
`

func TestDefaultUpstream(t *testing.T) {
	up := startUpstream(t)
	addr, s := startPolicy(t, fmt.Sprintf(hostilePolicy, up.Addr, up.Addr))
	base := "http://" + addr
	if r := do(t, "GET", base+"/elsewhere?x=1", "", nil); r.StatusCode() != 200 || string(r.Body()) != "from upstream" {
		t.Fatalf("unmatched request: %d %s", r.StatusCode(), r.Body())
	}
	// A path a route names, with the wrong method, is 405, not passed on.
	if r := do(t, "GET", base+"/api/orders", "", nil); r.StatusCode() != 405 {
		t.Fatalf("wrong method: %d %s", r.StatusCode(), r.Body())
	}
	// The status API is sluice's own.
	if r := do(t, "GET", base+StatusPrefix+"nope", "", nil); r.StatusCode() != 400 {
		t.Fatalf("status API: %d %s", r.StatusCode(), r.Body())
	}
	if got := up.Requests(); len(got) != 1 || got[0].String() != "GET "+up.Addr+" /elsewhere?x=1" {
		t.Fatalf("upstream saw %q", got)
	}
	if n := s.testQueue("orders").Stats().Appended; n != 0 {
		t.Fatalf("%d stored", n)
	}
}

// TestHostileRequests sends what a hostile or broken client might to the real
// listener, and checks the answer and that nothing was stored or forwarded.
func TestHostileRequests(t *testing.T) {
	up := startUpstream(t)
	addr, s := startPolicy(t, fmt.Sprintf(hostilePolicy, up.Addr, up.Addr))
	q := s.testQueue("orders")
	for _, c := range []struct {
		name, req, want string
	}{
		{"oversized headers",
			"POST /api/orders HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 4096) + "\r\nContent-Length: 2\r\n\r\n{}",
			"431 {\"error\":{\"code\":\"headers_too_large\""},
		{"oversized body, refused before it is sent",
			"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
			"413 {\"error\":{\"code\":\"body_too_large\""},
		{"CONNECT",
			"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
			"405 {\"error\":{\"code\":\"method_not_allowed\""},
		{"authority-form target",
			"GET evil.example:80 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
			"400 {\"error\":{\"code\":\"bad_request\""},
		{"malformed chunked body",
			"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
			"400 {\"error\":{\"code\":\"bad_request\""},
		{"chunk larger than max_body",
			"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + strings.Repeat("x", 2048) + "\r\n0\r\n\r\n",
			"413 {\"error\":{\"code\":\"body_too_large\""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := raw(t, addr, c.req); !strings.HasPrefix(got, c.want) {
				t.Fatalf("got %q, want %q...", got, c.want)
			}
		})
	}
	if n := q.Stats().Appended; n != 0 {
		t.Fatalf("%d messages stored by hostile requests", n)
	}
	if got := up.Requests(); len(got) != 0 {
		t.Fatalf("default upstream saw %q", got)
	}

	// An absolute URI naming another host: on a buffer route it is stored
	// under our route (path and query only) and delivered to the route's
	// target; on a passthrough route it goes to the route's upstream.
	got := raw(t, addr, "POST http://evil.example/api/orders?a=1 HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\n\r\n{}")
	if !strings.HasPrefix(got, "202 ") {
		t.Fatalf("absolute URI on a buffer route: %q", got)
	}
	if n := q.Stats().Appended; n != 1 {
		t.Fatalf("%d stored, want 1", n)
	}
	id, err := buffer.ParseID(strings.Split(strings.SplitN(got, `"id":"`, 2)[1], `"`)[0])
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := q.Lookup(id)
	if err != nil || m.URI != "/api/orders?a=1" {
		t.Fatalf("stored %+v, %v", m, err)
	}
	got = raw(t, addr, "GET http://evil.example/api/catalog/7 HTTP/1.1\r\nHost: evil.example\r\n\r\n")
	if !strings.HasPrefix(got, "200 from upstream") {
		t.Fatalf("absolute URI on a passthrough route: %q", got)
	}
	if r := up.Requests(); len(r) != 1 || r[0].String() != "GET "+up.Addr+" /api/catalog/7" {
		t.Fatalf("upstream saw %q", r)
	}
}

// TestSlowClient sends a request's headers a byte at a time, slower than
// read_timeout allows: the connection is closed and nothing is stored.
func TestSlowClient(t *testing.T) {
	up := startUpstream(t)
	addr, s := startPolicy(t, fmt.Sprintf(hostilePolicy, up.Addr, up.Addr))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "POST /api/orders HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("p", 40) + "\r\nContent-Length: 2\r\n\r\n{}"
	closed := make(chan string, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c) // until the server closes the connection
		closed <- string(b)
	}()
	var answer string
	done := false
	for i := 0; i < len(req) && !done; i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			break
		}
		select {
		case answer = <-closed:
			done = true
		case <-time.After(25 * time.Millisecond): // 60+ bytes: about 2s in all; read_timeout is 300ms
		}
	}
	if !done {
		select {
		case answer = <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("connection still open")
		}
	}
	if answer != "" && !strings.HasPrefix(answer, "HTTP/1.1 408 ") {
		t.Fatalf("slow request: want 408 or a closed connection, got %q", answer)
	}
	if n := s.testQueue("orders").Stats().Appended; n != 0 {
		t.Fatalf("%d stored", n)
	}
}

func TestMaxConnections(t *testing.T) {
	addr, _ := startPolicy(t, `
server: { max_connections: 2 }
routes:
  - name: orders
    match: { path: /api/orders }
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
`)
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 404 {
			t.Fatalf("connection %d: %v %v", len(conns), resp, err)
		}
		resp.Body.Close()
	}
	// The third is answered 503 with a JSON error and Retry-After, and closed.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("third connection: no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Retry-After") != "1" ||
		!strings.HasPrefix(string(body), `{"error":{"code":"too_many_connections"`) {
		t.Fatalf("third connection: %d %v %q, want 503 with a JSON error and Retry-After", resp.StatusCode, resp.Header, body)
	}
	// A place freed is taken again.
	conns[0].Close()
	time.Sleep(50 * time.Millisecond)
	if got := raw(t, addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"); !strings.HasPrefix(got, "404 ") {
		t.Fatalf("after one closed: %q", got)
	}
}

func TestTLSListener(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	addr, s := startPolicy(t, fmt.Sprintf(`
server: { tls: { cert: %s, key: %s } }
routes:
  - name: orders
    match: { path: /api/orders }
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
`, certFile, keyFile))
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Post("https://"+addr+"/api/orders", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	id, _ := buffer.ParseID(resp.Header.Get("X-Sluice-Id"))
	m, _, err := s.testQueue("orders").Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	proto := ""
	for _, h := range m.Header {
		if h.Name == "X-Forwarded-Proto" {
			proto = h.Value
		}
	}
	if proto != "https" {
		t.Fatalf("X-Forwarded-Proto %q, want https", proto)
	}
	// Plain HTTP on the TLS port gets no answer that could be taken for one.
	if got := raw(t, addr, "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"); strings.HasPrefix(got, "202") {
		t.Fatalf("plain HTTP accepted: %q", got)
	}
	if n := s.testQueue("orders").Stats().Appended; n != 1 {
		t.Fatalf("%d stored, want 1", n)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sluice test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestPassthroughRateLimit(t *testing.T) {
	up := startUpstream(t)
	addr, _ := startPolicy(t, fmt.Sprintf(`
routes:
  - name: catalog
    match: { path: /api/ }
    mode: passthrough
    upstream: http://%s
    rate: 1/m
    burst: 2
`, up.Addr))
	codes := map[int]int{}
	var last *fasthttp.Response
	for range 5 {
		last = do(t, "GET", "http://"+addr+"/api/x", "", nil)
		codes[last.StatusCode()]++
	}
	if codes[200] != 2 || codes[429] != 3 {
		t.Fatalf("answers %v, want 2 x 200 and 3 x 429", codes)
	}
	ra, err := strconv.Atoi(string(last.Header.Peek("Retry-After")))
	if err != nil || ra < 1 || ra > 60 || !strings.Contains(string(last.Body()), "rate_limited") {
		t.Fatalf("429: Retry-After %q, body %s", last.Header.Peek("Retry-After"), last.Body())
	}
	if n := len(up.Requests()); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}
}

// blackHole accepts connections and reads from them, never answering; it
// counts the requests it got (request lines seen).
type blackHole struct {
	addr     string
	requests atomic.Int64
}

func startBlackHole(t *testing.T) *blackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns sync.Map
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Go(func() {
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if f := strings.Fields(sc.Text()); len(f) == 3 && strings.HasPrefix(f[2], "HTTP/1.") {
						b.requests.Add(1)
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return b
}

// TestPassthroughOneAttempt: an upstream that takes requests and never
// answers gets each request once, and the client gets 504 at the route's
// timeout (fasthttp resent idempotent requests up to five times, each after
// its own timeout).
func TestPassthroughOneAttempt(t *testing.T) {
	for _, method := range []string{"PUT", "GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			bh := startBlackHole(t)
			addr, _ := startPolicy(t, fmt.Sprintf(`
routes:
  - name: catalog
    match: { path: /api/ }
    mode: passthrough
    upstream: http://%s
    timeout: 300ms
`, bh.addr))
			start := time.Now()
			got := raw(t, addr, method+" /api/items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
			took := time.Since(start)
			if !strings.HasPrefix(got, "504 ") || !strings.Contains(got, "upstream_timeout") {
				t.Fatalf("answer %q, want 504 upstream_timeout", got)
			}
			if took < 250*time.Millisecond || took > 1500*time.Millisecond {
				t.Errorf("answered after %v, want about the 300ms timeout", took)
			}
			time.Sleep(400 * time.Millisecond) // a resend would have come by now
			if n := bh.requests.Load(); n != 1 {
				t.Errorf("the upstream got the request %d times, want 1", n)
			}
		})
	}
}

// TestPassthroughStaleConnection: an upstream that closes a kept-alive
// connection when the next request arrives on it, without answering (an
// idle timeout racing the request). A GET is resent once on a new
// connection and answered; a POST is not resent (502).
//
// Both ways of serving a connection are checked: one event loop (two would
// each keep a pool, and the second request could meet none) and a goroutine
// per connection.
func TestPassthroughStaleConnection(t *testing.T) {
	for _, tc := range []struct {
		method string
		want   string
		sent   int64
		loops  int
	}{{"GET", "200 ok", 2, 1}, {"POST", "502 ", 1, 1}, {"GET", "200 ok", 2, 0}, {"POST", "502 ", 1, 0}} {
		t.Run(fmt.Sprintf("%s/loops=%d", tc.method, tc.loops), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var requests atomic.Int64
			var wg sync.WaitGroup
			t.Cleanup(func() { ln.Close(); wg.Wait() })
			wg.Go(func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					wg.Go(func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(time.Second))
						br := bufio.NewReader(c)
						for n := 0; ; n++ {
							req, err := http.ReadRequest(br)
							if err != nil {
								return
							}
							io.Copy(io.Discard, req.Body)
							requests.Add(1)
							if n > 0 {
								return // closed without an answer
							}
							io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						}
					})
				}
			})
			addr, _ := startPolicy(t, fmt.Sprintf(`
server: { event_loops: %d }
routes:
  - name: catalog
    match: { path: /api/ }
    mode: passthrough
    upstream: http://%s
    timeout: 2s
`, tc.loops, ln.Addr().String()))
			// The first request leaves a pooled connection; the second meets it closed.
			if got := raw(t, addr, tc.method+" /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"); got != "200 ok" {
				t.Fatalf("first request: %q", got)
			}
			if got := raw(t, addr, tc.method+" /api/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"); !strings.HasPrefix(got, tc.want) {
				t.Errorf("on a closed pooled connection: %q, want %q", got, tc.want)
			}
			if n := requests.Load(); n != 1+tc.sent {
				t.Errorf("the upstream got %d requests, want %d", n, 1+tc.sent)
			}
		})
	}
}

// TestNoEcho: malformed requests carrying a credential are answered with a
// JSON error that quotes nothing of the request, and the debug log holds none
// of it either (fasthttp's errors carry a snippet of the request).
func TestNoEcho(t *testing.T) {
	up := startUpstream(t)
	var logs testutil.Buffer
	addr, _ := startPolicyWith(t, fmt.Sprintf(hostilePolicy, up.Addr, up.Addr), func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	const secret = "sekrit-7f3a"
	for _, req := range []string{
		"POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + "\r\nBad Header Line\r\nContent-Length: 2\r\n\r\n{}",
		"POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + "\r\nContent-Length: abc\r\n\r\n{}",
		"POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + "\r\nTransfer-Encoding: chunked\r\n\r\nzz" + secret + "\r\n0\r\n\r\n",
		"GARBAGE " + secret + "\r\n\r\n",
		"GET " + secret + ".example:80 HTTP/1.1\r\nHost: x\r\n\r\n",
		"DELETE /api/orders/" + secret + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /_sluice/v1/messages/" + secret + " HTTP/1.1\r\nHost: x\r\n\r\n",
		// A streamed passthrough body whose trailer is malformed.
		"POST /api/catalog HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n" + strings.Repeat("a", 0x10000) +
			"\r\n0\r\nAuthorization: Bearer " + secret + "\x01\r\n\r\n",
	} {
		got := raw(t, addr, req)
		if !strings.HasPrefix(got, "4") || strings.Contains(got, secret) {
			t.Errorf("request %.50q...: answer %q, want a 4xx quoting nothing of the request", req, got)
		}
	}
	if l := logs.String(); strings.Contains(l, secret) {
		t.Errorf("the log holds request bytes:\n%s", l)
	}
}

// TestBareLF: a request whose lines end in a bare LF is answered 400 at once,
// not after read_timeout (fasthttp waits for CRLF CRLF); a CRLF request on
// another connection is served as usual.
func TestBareLF(t *testing.T) {
	addr, s := startPolicy(t, `
server: { read_timeout: 10s }
routes:
  - name: orders
    match: { path: /api/orders }
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
`)
	start := time.Now()
	got := raw(t, addr, "POST /api/orders HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}")
	if took := time.Since(start); !strings.HasPrefix(got, "400 ") || !strings.Contains(got, "bare LF") || took > 2*time.Second {
		t.Fatalf("bare LF request: %q after %v, want 400 at once", got, took)
	}
	if got := raw(t, addr, "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"); !strings.HasPrefix(got, "202 ") {
		t.Fatalf("CRLF request: %q", got)
	}
	if n := s.testQueue("orders").Stats().Appended; n != 1 {
		t.Fatalf("%d stored, want 1", n)
	}
}

// TestLineCheck: the first LF of a connection decides, wherever the reads
// split the bytes.
func TestLineCheck(t *testing.T) {
	for _, c := range []struct {
		reads []string
		bad   bool
	}{
		{[]string{"GET / HTTP/1.1\r\n"}, false},
		{[]string{"GET / HTTP/1.1\n"}, true},
		{[]string{"GET / HTTP/1.1\r", "\nHost: x\n\n"}, false}, // later bare LFs are not looked at
		{[]string{"GET / HTTP/1.1", "\n"}, true},
		{[]string{"\n"}, true},
		{[]string{"GET /", " HTTP/1.1\r\n"}, false},
	} {
		var lc lineCheck
		for _, r := range c.reads {
			p := []byte(r)
			lc.read(p, len(p), nil)
		}
		if lc.bad != c.bad {
			t.Errorf("reads %q: bad %v, want %v", c.reads, lc.bad, c.bad)
		}
	}
}

// TestNormalisedPath: the path is normalised once (unreserved characters
// decoded, dot segments removed, an encoded slash kept encoded), and that
// form is routed, stored and forwarded; the body limit before the body is
// read is the same route's.
func TestNormalisedPath(t *testing.T) {
	up := startUpstream(t)
	addr, s := startPolicy(t, fmt.Sprintf(`
routes:
  - name: orders
    match: { path: /orders, methods: [POST] }
    max_body: 1KiB
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
  - name: files
    match: { path: /api/ }
    mode: passthrough
    upstream: http://%s
`, up.Addr))
	q := s.testQueue("orders")
	post := func(target string, body string) string {
		return raw(t, addr, fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", target, len(body), body))
	}
	// Dot segments, encoded or not, are resolved: this is /orders, stored as such.
	got := post("/api/%2e%2E/orders?a=%2F", "{}")
	if !strings.HasPrefix(got, "202 ") {
		t.Fatalf("/api/%%2e%%2E/orders: %q, want 202 on route orders", got)
	}
	id, err := buffer.ParseID(strings.Split(strings.SplitN(got, `"id":"`, 2)[1], `"`)[0])
	if err != nil {
		t.Fatal(err)
	}
	if m, _, err := q.Lookup(id); err != nil || m.URI != "/orders?a=%2F" {
		t.Fatalf("stored URI %q (%v), want /orders?a=%%2F: the path as routed, the query as sent", m.URI, err)
	}
	// An encoded slash is no segment boundary: one segment, no route.
	if got := post("/api%2F..%2Forders", "{}"); !strings.HasPrefix(got, "404 ") {
		t.Errorf("/api%%2F..%%2Forders: %q, want 404", got)
	}
	// The body limit applied before the body is read is the route's that
	// the normalised path matches (orders: 1 KiB), not the raw path's.
	if got := raw(t, addr, "POST /api/../orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"); !strings.HasPrefix(got, "413 ") {
		t.Errorf("/api/../orders with 5000 bytes: %q, want 413 from route orders", got)
	}
	if n := q.Stats().Appended; n != 1 {
		t.Errorf("%d stored, want 1", n)
	}
	// Passthrough forwards the path it routed.
	for target, want := range map[string]string{
		"/api/files/a%2fb?x=%2F":        "/api/files/a%2Fb?x=%2F",
		"/api/./files/%7Euser/../b":     "/api/files/b",
		"http://evil/api/x/%2e/y?q=1":   "/api/x/y?q=1",
		"/api/files/%41%62%2D%5F%2e%7e": "/api/files/Ab-_.~",
	} {
		if got := raw(t, addr, "GET "+target+" HTTP/1.1\r\nHost: x\r\n\r\n"); !strings.HasPrefix(got, "200 ") {
			t.Errorf("GET %s: %q", target, got)
			continue
		}
		r := up.Requests()
		if last := r[len(r)-1].String(); !strings.HasSuffix(last, " "+want) {
			t.Errorf("GET %s reached the upstream as %q, want %s", target, last, want)
		}
	}
	if got := raw(t, addr, "GET /api/%zz HTTP/1.1\r\nHost: x\r\n\r\n"); !strings.HasPrefix(got, "400 ") {
		t.Errorf("malformed percent-encoding: %q, want 400", got)
	}
}

// TestStatusAPIAccess: what an id holder sees. With status_api.token, no
// token or a wrong one is 401; the query's values, credential headers of the
// captured answer and its body are hidden unless the admin token is given
// (the body) or show_query is set; only the canonical spelling of an id is
// taken; enabled: false turns the API off.
func TestStatusAPIAccess(t *testing.T) {
	const (
		statusTok = "status-token-0123456789"
		adminTok  = "admin-token-0123456789"
	)
	policy := `
status_api: { token: ` + statusTok + `, redact_headers: [X-Session] %s }
routes:
  - name: orders
    match: { path: /api/orders }
    targets: [{ name: a, url: "http://127.0.0.1:1", capture_response: {} }]
`
	setup := func(t *testing.T, extra string) (string, string) {
		base, s := policyServerWith(t, fmt.Sprintf(policy, extra), func(c *Config) { c.AdminToken = adminTok })
		q := s.testQueue("orders")
		id, err := q.Append(context.Background(), &buffer.Message{Method: "POST", URI: "/api/orders?api_key=k-123&n=7&tok_s3cret", Body: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := q.Consumer("a")
		ds, err := c.Fetch(1, time.Now())
		if err != nil || len(ds) != 1 {
			t.Fatalf("fetch: %v %v", ds, err)
		}
		r := &buffer.Response{Status: 201, Header: []buffer.Header{
			{Name: "Set-Cookie", Value: "sid=s3cret"}, {Name: "authorization", Value: "Bearer up-s3cret"},
			{Name: "X-Session", Value: "sess-s3cret"}, {Name: "Location", Value: "/orders/7"}},
			Body: []byte(`{"card":"4111-s3cret"}`)}
		if err := c.Complete(context.Background(), ds[0], buffer.Outcome{Phase: buffer.Delivered, Attempt: buffer.Attempt{At: time.Now(), Status: 201}, Response: r}); err != nil {
			t.Fatal(err)
		}
		return base, id.String()
	}
	get := func(t *testing.T, url, tok string) (int, string) {
		hdr := map[string]string{}
		if tok != "" {
			hdr["Authorization"] = "Bearer " + tok
		}
		r := do(t, "GET", url, "", hdr)
		return r.StatusCode(), string(r.Body())
	}

	base, id := setup(t, "")
	url := base + StatusPrefix + id
	for _, tok := range []string{"", "wrong-token-0123456789", statusTok[:len(statusTok)-1]} {
		if code, body := get(t, url, tok); code != 401 || strings.Contains(body, "s3cret") {
			t.Errorf("token %q: %d %s, want 401", tok, code, body)
		}
	}
	code, body := get(t, url, statusTok)
	if code != 200 {
		t.Fatalf("status token: %d %s", code, body)
	}
	for _, want := range []string{`"uri":"/api/orders?api_key=redacted\u0026n=redacted\u0026redacted"`, `"Set-Cookie":"redacted"`,
		`"authorization":"redacted"`, `"X-Session":"redacted"`, `"Location":"/orders/7"`, `"body_omitted":true`} {
		if !strings.Contains(body, want) {
			t.Errorf("status token: %s lacks %s", body, want)
		}
	}
	if strings.Contains(body, "s3cret") || strings.Contains(body, "k-123") {
		t.Errorf("status token: secrets shown: %s", body)
	}
	if code, body := get(t, url, adminTok); code != 200 || !strings.Contains(body, `"body":"{\"card\":\"4111-s3cret\"}"`) || strings.Contains(body, "sid=") {
		t.Errorf("admin token: %d %s, want the body and still no credential headers", code, body)
	}
	// Other spellings of the same id: uppercase, and Crockford's look-alikes.
	for _, other := range []string{strings.ToUpper(id), strings.NewReplacer("0", "o", "1", "l").Replace(id)} {
		if other == id {
			continue
		}
		if code, _ := get(t, base+StatusPrefix+other, statusTok); code != 400 {
			t.Errorf("id spelled %q: %d, want 400", other, code)
		}
	}

	base, id = setup(t, ", show_query: true")
	if _, body := get(t, base+StatusPrefix+id, statusTok); !strings.Contains(body, `api_key=k-123`) {
		t.Errorf("show_query: %s", body)
	}
	base, id = setup(t, ", enabled: false")
	if code, _ := get(t, base+StatusPrefix+id, adminTok); code != 404 {
		t.Errorf("enabled: false: %d, want 404", code)
	}
}

// TestBufferRouteRefusesReads: a buffer route without methods takes the
// methods with a body to deliver; a GET or HEAD (a log shipper's version
// probe) gets 405 with Allow, and nothing is stored.
func TestBufferRouteRefusesReads(t *testing.T) {
	addr, s := startPolicy(t, `
routes:
  - name: orders
    match: { path: /api/orders }
    targets: [{ name: inv, url: "http://127.0.0.1:1", rate: 0 }]
`)
	for _, m := range []string{"GET", "HEAD"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, m+" /api/orders HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: m})
		c.Close()
		if err != nil || resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST, PUT, PATCH, DELETE" {
			t.Errorf("%s on a buffer route: %v %v, want 405 with Allow", m, resp, err)
		}
	}
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		if got := raw(t, addr, m+" /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"); !strings.HasPrefix(got, "202 ") {
			t.Errorf("%s: %q", m, got)
		}
	}
	if n := s.testQueue("orders").Stats().Appended; n != 4 {
		t.Errorf("%d stored, want 4", n)
	}
}

// TestRedactQuery: every value is hidden, and so is a parameter with no
// "=", which may itself be a token; names and empty values stay.
func TestRedactQuery(t *testing.T) {
	for in, want := range map[string]string{
		"/a":                      "/a",
		"/a?":                     "/a?",
		"/a?k=v&n=7":              "/a?k=redacted&n=redacted",
		"/a?tok_abc123":           "/a?redacted",
		"/a?x=1&tok_abc123&e=&&y": "/a?x=redacted&redacted&e=&&redacted",
	} {
		if got := redactQuery(in); got != want {
			t.Errorf("redactQuery(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTokenEqual: only the token itself matches; a prefix, an extension,
// another token of the same length and an empty one do not.
func TestTokenEqual(t *testing.T) {
	const want = "s3cret-token"
	if !tokenEqual([]byte(want), want) {
		t.Fatal("the token does not match itself")
	}
	for _, got := range []string{"", "s3cret", "s3cret-token!", "s3cret-tokeN", "S3CRET-TOKEN"} {
		if tokenEqual([]byte(got), want) {
			t.Errorf("%q matches %q", got, want)
		}
	}
	if tokenEqual(nil, "") {
		t.Error("an empty token matches an empty want")
	}
}
