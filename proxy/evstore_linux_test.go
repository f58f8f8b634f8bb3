package proxy

import (
	"bufio"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

const storeParityPolicy = `
server: { event_loops: %d }
callbacks: { allow: ["http://127.0.0.1:9000/"] }
routes:
  - name: orders
    match: { path: /orders, methods: [POST, PUT] }
    idempotency_header: Idempotency-Key
    callback_header: X-Sluice-Callback
    max_body: 64
    targets: [{ name: a, url: "http://127.0.0.1:1", rate: 0 }]
  - name: waits
    match: { path: /waits }
    max_wait: 1h
    targets: [{ name: stopped, url: "http://127.0.0.1:1", rate: 0 }]
`

var (
	idPattern  = regexp.MustCompile(`[0-9a-hjkmnp-tv-z]{26}`)
	etaPattern = regexp.MustCompile(`"eta":"[^"]*"`)
)

// storeExchange sends the pieces of raw bytes on a new connection to addr,
// a pause between them, reads n answers, and returns each as status line,
// header fields sorted (Date's value and ids left out) and body, what the
// store holds for each id it gave (the first message's for a duplicate),
// and whether the server closed the connection after the last answer.
func storeExchange(t *testing.T, addr string, s *Server, pieces []string, n int) (answers, records []string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	must(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for i, p := range pieces {
		if i > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		_, err := c.Write([]byte(p))
		must(t, err)
	}
	br := bufio.NewReader(c)
	for range n {
		var res fasthttp.Response
		res.Header.DisableNormalizing()
		if err := res.Read(br); err != nil {
			t.Fatalf("answer %d of %d: %v", len(answers)+1, n, err)
		}
		a := describeAnswer(&res)
		answers = append(answers, etaPattern.ReplaceAllString(idPattern.ReplaceAllString(a, "<id>"), `"eta":"<eta>"`))
		if id := string(res.Header.Peek("X-Sluice-Id")); id != "" {
			pid, err := buffer.ParseID(id)
			must(t, err)
			m, _, err := s.testQueue("orders").Lookup(pid)
			must(t, err)
			var hs []string
			for _, h := range m.Header {
				hs = append(hs, h.Name+": "+h.Value)
			}
			records = append(records, fmt.Sprintf("%s %s key=%q\n%s\n\n%s", m.Method, m.URI, m.IdempotencyKey, strings.Join(hs, "\n"), m.Body))
		}
	}
	c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	_, err = br.ReadByte()
	return answers, records, err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestEventLoopStoreParity sends the same requests to a buffer route through
// sluice served by the event loop and by the fasthttp path alone: the
// client must get the same answers (ids, dates and estimates apart), the
// store must hold the same records, and the loop must have stored the
// requests it accepts itself.
func TestEventLoopStoreParity(t *testing.T) {
	fast, fs := startPolicy(t, fmt.Sprintf(storeParityPolicy, 1))
	slow, ss := startPolicy(t, fmt.Sprintf(storeParityPolicy, 0))
	post := func(extra, body string) string {
		return "POST /orders HTTP/1.1\r\nHost: shop.example\r\n" + extra + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
	}
	cases := []struct {
		name   string
		pieces []string
		n      int
		onLoop int // requests the loop stores or refuses itself
	}{
		{"post", []string{post("Content-Type: application/json\r\nIdempotency-Key: k1\r\n", `{"a":1}`)}, 1, 1},
		{"duplicate", []string{post("Content-Type: application/json\r\nIdempotency-Key: k1\r\n", `{"a":1}`)}, 1, 1},
		{"key reused", []string{post("Idempotency-Key: k1\r\n", `{"a":2}`)}, 1, 1},
		{"headers", []string{"PUT /orders/../orders?x=1&y=%7E HTTP/1.1\r\nhost: shop.example\r\nx-request-id: abc\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n" +
			"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nCookie: a=1\r\ncontent-length: 2\r\n\r\nhi"}, 1, 1},
		{"no body", []string{"POST /orders HTTP/1.1\r\nHost: h\r\n\r\n"}, 1, 1},
		{"over max_body", []string{post("", strings.Repeat("b", 65))}, 1, 0},
		{"callback allowed", []string{post("X-Sluice-Callback: http://127.0.0.1:9000/hook\r\n", "cb")}, 1, 1},
		{"callback refused", []string{post("X-Sluice-Callback: http://127.0.0.1:9001/hook\r\n", "cb")}, 1, 1},
		{"callback twice", []string{post("X-Sluice-Callback: http://127.0.0.1:9000/a\r\nX-Sluice-Callback: http://127.0.0.1:9000/b\r\n", "cb")}, 1, 1},
		{"max_wait", []string{"POST /waits HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nw"}, 1, 1},
		{"wrong method", []string{"GET /orders HTTP/1.1\r\nHost: h\r\n\r\n"}, 1, 0},
		{"pipelined", []string{post("Idempotency-Key: p1\r\n", "one") + post("Idempotency-Key: p1\r\n", "one") + post("", "three")}, 3, 3},
		{"split", []string{"POST /orders HT", "TP/1.1\r\nHost: h\r\nIdempotency-Key: s1\r\nContent-Le", "ngth: 6\r\n\r\n", "abc", "def"}, 1, 1},
		{"connection close", []string{post("Connection: close\r\n", "bye")}, 1, 1},
		{"pipelined after close", []string{post("Connection: close\r\n", "bye") + post("", "never")}, 1, 1},
		{"chunked", []string{"POST /orders HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"}, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := fs.engine.Load().stored.Load()
			slowAns, slowRecs, slowClosed := storeExchange(t, slow, ss, tc.pieces, tc.n)
			fastAns, fastRecs, fastClosed := storeExchange(t, fast, fs, tc.pieces, tc.n)
			if !slices.Equal(fastAns, slowAns) {
				t.Errorf("answers through the event loop:\n%s\nthrough fasthttp:\n%s", strings.Join(fastAns, "\n--\n"), strings.Join(slowAns, "\n--\n"))
			}
			if !slices.Equal(fastRecs, slowRecs) {
				t.Errorf("stored through the event loop:\n%s\nthrough fasthttp:\n%s", strings.Join(fastRecs, "\n--\n"), strings.Join(slowRecs, "\n--\n"))
			}
			if fastClosed != slowClosed {
				t.Errorf("connection closed after the answers: %v through the event loop, %v through fasthttp", fastClosed, slowClosed)
			}
			if got := fs.engine.Load().stored.Load() - before; got != uint64(tc.onLoop) {
				t.Errorf("the loop answered %d requests itself, want %d", got, tc.onLoop)
			}
		})
	}
	if a, b := fs.testQueue("orders").Stats().Appended, ss.testQueue("orders").Stats().Appended; a != b || a == 0 {
		t.Errorf("stored %d messages through the event loop, %d through fasthttp", a, b)
	}
}

// With the storage full, the loop refuses as the fasthttp path does: 503
// storage_full with Retry-After, nothing stored.
func TestEventLoopStoreFullParity(t *testing.T) {
	policy := func(loops int) string { return fmt.Sprintf(storeParityPolicy, loops) }
	fs, _ := newTestServer(t, policy(1), buffer.Config{MaxBytes: 1}, nil)
	ss, _ := newTestServer(t, policy(0), buffer.Config{MaxBytes: 1}, nil)
	fast, slow := listen(t, fs), listen(t, ss)
	req := []string{"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nfull"}
	slowAns, _, _ := storeExchange(t, slow, ss, req, 1)
	fastAns, _, _ := storeExchange(t, fast, fs, req, 1)
	if !strings.HasPrefix(fastAns[0], "503 ") || !strings.Contains(fastAns[0], `"storage_full"`) || !strings.Contains(fastAns[0], "Retry-After: ") {
		t.Fatalf("full storage through the event loop: %s", fastAns[0])
	}
	if fastAns[0] != slowAns[0] {
		t.Errorf("answer through the event loop:\n%s\nthrough fasthttp:\n%s", fastAns[0], slowAns[0])
	}
	if got := fs.engine.Load().stored.Load(); got != 1 {
		t.Errorf("the loop answered %d requests itself, want 1", got)
	}
	if n := fs.testQueue("orders").Stats().Appended; n != 0 {
		t.Errorf("%d stored with the storage full", n)
	}
}

// Shutdown while a batch is being committed: the request is answered once
// its commit returned (202, Connection: close), not before, and Shutdown
// waits for it.
func TestEventLoopStoreShutdownAnswersInFlight(t *testing.T) {
	entered, release := make(chan struct{}, 16), make(chan struct{})
	var once sync.Once
	s, _ := newTestServer(t, fmt.Sprintf(storeParityPolicy, 1), buffer.Config{ObserveSync: func(time.Duration) {
		entered <- struct{}{}
		<-release // the commit holds here, its record written and synced
	}}, nil)
	defer once.Do(func() { close(release) })
	_, c, served := serveOne(t, s, "POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the request's commit did not begin")
	}
	shut := shutdownLater(s)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n > 0 || !isTimeout(err) {
		t.Fatalf("answered before the commit returned: %d bytes, %v", n, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned before the commit in flight did: %v", err)
	default:
	}
	once.Do(func() { close(release) })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var res fasthttp.Response
	if err := res.Read(bufio.NewReader(c)); err != nil {
		t.Fatalf("answer of the request in flight: %v", err)
	}
	if res.StatusCode() != 202 || !res.ConnectionClose() {
		t.Fatalf("answer %d %s (Connection: close %v), want 202 and close", res.StatusCode(), res.Body(), res.ConnectionClose())
	}
	select {
	case err := <-shut:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	must(t, <-served)
	if n := s.testQueue("orders").Stats().Appended; n != 1 {
		t.Fatalf("%d stored, want 1", n)
	}
}

// Large bodies stored by the loop are stored whole, and what the loop
// keeps for reuse afterwards does not hold them.
func TestEventLoopStoreLargeBodies(t *testing.T) {
	addr, s := startPolicy(t, `
server: { event_loops: 1 }
routes:
  - name: orders
    match: { path: /orders }
    max_body: 64KiB
    targets: [{ name: a, url: "http://127.0.0.1:1", rate: 0 }]
`)
	const clients, each = 8, 4
	exchangeMany(t, addr, clients, each, func(i, j int) (string, string) {
		body := strings.Repeat(string(rune('a'+i)), 60<<10+j)
		return fmt.Sprintf("POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(body), body), "202"
	})
	e := s.engine.Load()
	if n := e.stored.Load(); n != clients*each {
		t.Fatalf("the loop stored %d, want %d", n, clients*each)
	}
	if n := s.testQueue("orders").Stats().Appended; n != clients*each {
		t.Fatalf("%d appended, want %d", n, clients*each)
	}
	kept := make(chan int, 1)
	e.loops[0].post(func(l *evloop) {
		n := 0
		for _, sr := range l.freeReqs {
			n = max(n, cap(sr.ctx.Request.Body()))
		}
		kept <- n
	})
	if n := <-kept; n > keepBuf {
		t.Fatalf("a free request keeps a body buffer of %d bytes, more than %d", n, keepBuf)
	}
}
