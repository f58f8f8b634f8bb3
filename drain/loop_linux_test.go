//go:build linux

package drain

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

// parityAnswer is what the parity downstream does with one request: write
// these pieces (a pause between them), then close the connection, reset
// it, or keep it for the next request.
type parityAnswer struct {
	pieces []string
	pause  time.Duration
	end    string // "keep", "close", "reset", "stall"
}

// parityDownstream serves both targets of TestLoopParity: each request's
// raw bytes are kept by target (its path's first segment, which it then
// drops) and answered by the case its X-Case field names.
type parityDownstream struct {
	mu    sync.Mutex
	wires map[string][][]byte // target -> raw requests, the target's path prefix dropped
	cases map[string]parityAnswer
}

func (p *parityDownstream) serve(t *testing.T, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.conn(c)
	}
}

// teeReader keeps what is read through it.
type teeReader struct {
	r   io.Reader
	got []byte
}

func (t *teeReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	t.got = append(t.got, b[:n]...)
	return n, err
}

func (p *parityDownstream) conn(c net.Conn) {
	defer c.Close()
	tee := &teeReader{r: c}
	br := bufio.NewReader(tee)
	for {
		var req fasthttp.Request
		tee.got = tee.got[:0]
		if err := req.Read(br); err != nil {
			return
		}
		raw := bytes.Clone(tee.got[:len(tee.got)-br.Buffered()]) // one request at a time: nothing is buffered
		target, rest, _ := strings.Cut(strings.TrimPrefix(string(req.RequestURI()), "/"), "/")
		raw = bytes.Replace(raw, []byte(" /"+target+"/"), []byte(" /"), 1)
		p.mu.Lock()
		p.wires[target] = append(p.wires[target], raw)
		a := p.cases[string(req.Header.Peek("X-Case"))]
		p.mu.Unlock()
		_ = rest
		for i, piece := range a.pieces {
			if i > 0 {
				time.Sleep(a.pause)
			}
			if _, err := io.WriteString(c, piece); err != nil {
				return
			}
		}
		switch a.end {
		case "close":
			return
		case "reset":
			c.(*net.TCPConn).SetLinger(0)
			return
		case "stall":
			time.Sleep(time.Second)
			return
		}
	}
}

// TestLoopParity: the same messages and answers through the delivery loop
// and through goroutines with the fasthttp client (Config.NoLoop) give the
// downstream the same request bytes and record the same outcome: phase,
// status, error and Retry-After. Two targets of one queue, one per path,
// each message attempted once by each.
func TestLoopParity(t *testing.T) {
	ok := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	big := strings.Repeat("b", 1<<20)
	bigHead := "HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("h", 70<<10) + "\r\nContent-Length: 0\r\n\r\n"
	httpDate := time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat) // whole seconds: 2-3 s ahead
	cases := map[string]parityAnswer{
		"sized":         {pieces: []string{ok}, end: "keep"},
		"sized-split":   {pieces: []string{"HTTP/1.1 200 OK\r\nContent-Le", "ngth: 5\r\n\r\nhe", "llo"}, pause: 20 * time.Millisecond, end: "keep"},
		"no-content":    {pieces: []string{"HTTP/1.1 204 No Content\r\n\r\n"}, end: "keep"},
		"chunked-whole": {pieces: []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"}, end: "keep"},
		"chunked-slow":  {pieces: []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", "3\r\nabc\r\n0\r\n\r\n"}, pause: 30 * time.Millisecond, end: "keep"},
		"trailers":      {pieces: []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"}, end: "keep"},
		"http10":        {pieces: []string{"HTTP/1.0 200 OK\r\n\r\nbody to the end"}, end: "close"},
		"unframed":      {pieces: []string{"HTTP/1.1 201 Created\r\n\r\nbody to the end"}, end: "close"},
		"continue":      {pieces: []string{"HTTP/1.1 100 Continue\r\n\r\n", ok}, end: "keep"},
		"too-many":      {pieces: []string{"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n"}, end: "keep"},
		"unavailable":   {pieces: []string{"HTTP/1.1 503 Service Unavailable\r\nretry-after: " + httpDate + "\r\nContent-Length: 0\r\n\r\n"}, end: "keep"},
		"error":         {pieces: []string{"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"}, end: "keep"},
		"not-found":     {pieces: []string{"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"}, end: "keep"},
		"redirect":      {pieces: []string{"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"}, end: "keep"},
		"closing":       {pieces: []string{"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"}, end: "close"},
		"large":         {pieces: []string{"HTTP/1.1 200 OK\r\nContent-Length: " + fmt.Sprint(len(big)) + "\r\n\r\n" + big}, end: "keep"},
		"short-body":    {pieces: []string{"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"}, end: "close"},
		"two-lengths":   {pieces: []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"}, end: "close"},
		"big-head":      {pieces: []string{bigHead}, end: "keep"},
		"garbage":       {pieces: []string{"SMTP ready\r\n\r\n"}, end: "close"},
		"half-head":     {pieces: []string{"HTTP/1.1 200 OK\r\nContent-"}, end: "close"},
		"silent-close":  {end: "close"},
		"reset":         {end: "reset"},
		"stall":         {pieces: []string{"HTTP/1.1 200"}, end: "stall"},
		"head":          {pieces: []string{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"}, end: "keep"},
	}
	ds := &parityDownstream{wires: map[string][][]byte{}, cases: cases}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go ds.serve(t, ln)

	_, q, _ := newQueue(t, "loop", "goroutine")
	var ids []store.ID
	var names []string
	for name := range cases {
		m := &buffer.Message{
			Method: "POST",
			URI:    "/api/%7Eorders/./a%2Fb?x=" + name + "&y=%2F",
			Header: []buffer.Header{
				{Name: "X-Case", Value: name},
				{Name: "content-type", Value: "application/json"},
				{Name: "User-Agent", Value: "client/1.0"},
				{Name: "Cookie", Value: "a=1; b=2"},
				{Name: "Connection", Value: "X-Hop"},
				{Name: "X-Hop", Value: "dropped"},
				{Name: "Expect", Value: "100-continue"},
				{Name: "x-lower", Value: "v1"},
				{Name: "X-Multi", Value: "1"},
				{Name: "X-Multi", Value: "2"},
			},
			Body: []byte(`{"case":"` + name + `"}`),
		}
		if name == "head" {
			m.Method, m.Body = "HEAD", nil
		}
		id, err := q.Append(t.Context(), m)
		if err != nil {
			t.Fatal(err)
		}
		ids, names = append(ids, id), append(names, name)
	}
	for _, target := range []string{"loop", "goroutine"} {
		tg := testTarget(target, "http://"+ln.Addr().String()+"/"+target)
		tg.Timeout = 400 * time.Millisecond
		tg.Retry.MaxAttempts = 2 // a retryable failure is Retrying, its next try kept
		tg.Retry.Initial, tg.Retry.Max = time.Hour, time.Hour
		startDrainer(t, Config{Target: tg, NoLoop: target == "goroutine", Rand: func() float64 { return 0 }}, consumer(t, q, target))
	}
	settled := func(st buffer.TargetStatus) bool {
		return st.Phase != store.Queued && st.Phase != store.InFlight && len(st.History) > 0
	}
	waitFor(t, 20*time.Second, "an outcome of every message for both targets", func() bool {
		for _, id := range ids {
			for _, target := range []string{"loop", "goroutine"} {
				if !settled(status(t, q, id, target)) {
					return false
				}
			}
		}
		return true
	})
	for i, id := range ids {
		a, b := status(t, q, id, "loop"), status(t, q, id, "goroutine")
		la, lb := a.History[0], b.History[0]
		if a.Phase != b.Phase || la.Status != lb.Status || la.Error != lb.Error {
			t.Errorf("%s: loop %s, status %d, %q; goroutine %s, status %d, %q",
				names[i], a.Phase, la.Status, la.Error, b.Phase, lb.Status, lb.Error)
		}
		if a.Phase == store.Retrying {
			wa, wb := a.NextTry.Sub(la.At.Add(la.Duration)), b.NextTry.Sub(lb.At.Add(lb.Duration))
			if d := wa - wb; d < -time.Second || d > time.Second {
				t.Errorf("%s: next try %v after the attempt on the loop, %v on goroutines", names[i], wa, wb)
			}
		}
		t.Logf("%-13s %-9s %3d %q", names[i], a.Phase, la.Status, la.Error)
	}
	// What the downstream received, request by request in the order each
	// target sent them (the targets fetch in the same order).
	ds.mu.Lock()
	defer ds.mu.Unlock()
	byCase := func(wires [][]byte) map[string][]byte {
		m := map[string][]byte{}
		for _, w := range wires {
			i := bytes.Index(w, []byte("X-Case: "))
			if i < 0 {
				t.Fatalf("a request without X-Case: %q", w)
			}
			name, _, _ := bytes.Cut(w[i+8:], []byte("\r\n"))
			m[string(name)] = w
		}
		return m
	}
	lw, gw := byCase(ds.wires["loop"]), byCase(ds.wires["goroutine"])
	if len(lw) != len(cases) || len(gw) != len(cases) {
		t.Fatalf("requests of %d and %d cases, want %d each", len(lw), len(gw), len(cases))
	}
	for name, w := range gw {
		if !bytes.Equal(lw[name], w) {
			t.Errorf("%s: the loop sent\n%q\nthe fasthttp client sent\n%q", name, lw[name], w)
		}
	}
}

// TestLoopParityNoListener: a target nobody listens on fails alike on both
// paths (the dial's error, retried as a connect failure).
func TestLoopParityNoListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	_, q, _ := newQueue(t, "loop", "goroutine")
	id, err := q.Append(t.Context(), order(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"loop", "goroutine"} {
		tg := testTarget(target, "http://"+addr)
		tg.Retry.MaxAttempts = 2
		tg.Retry.Initial, tg.Retry.Max = time.Hour, time.Hour
		startDrainer(t, Config{Target: tg, NoLoop: target == "goroutine"}, consumer(t, q, target))
	}
	waitFor(t, 10*time.Second, "both outcomes", func() bool {
		return status(t, q, id, "loop").Phase == store.Retrying && status(t, q, id, "goroutine").Phase == store.Retrying
	})
	a, b := status(t, q, id, "loop").History[0], status(t, q, id, "goroutine").History[0]
	if a.Error != b.Error || a.Error != "connect: connection refused" {
		t.Errorf("loop: %q; goroutine: %q; want both %q", a.Error, b.Error, "connect: connection refused")
	}
}

// TestLoopSoak: 1500 messages through the delivery loop at concurrency 16
// to a downstream that, on first and second attempts, closes without
// answering, resets, refuses (503), answers in pieces, chunked and slowly
// (the goroutine reader), or with Connection: close, and answers 200 from
// the third on. Every message is delivered; none is answered 2xx twice
// (no attempt is sent again by the client, none is lost between the loop
// and the store); every request of a message carries its one key.
func TestLoopSoak(t *testing.T) {
	const n = 1500
	type seen struct {
		ok   int
		keys map[string]bool
	}
	var mu sync.Mutex
	byID := map[string]*seen{}
	answer := func(c net.Conn, id string, attempt int) (keep bool) {
		keep = true
		h := 0
		for _, ch := range id {
			h = h*31 + int(ch)
		}
		kind := (h%20 + 20) % 20
		if attempt >= 3 {
			kind = 19
		}
		if attempt == 2 {
			kind = []int{0, 6, 14, 16}[kind%4]
		}
		okAnswer := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
		switch {
		case kind < 4: // close without an answer
			return false
		case kind < 6:
			c.(*net.TCPConn).SetLinger(0)
			return false
		case kind < 9:
			io.WriteString(c, "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
			return true
		case kind < 11:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
			time.Sleep(15 * time.Millisecond)
			io.WriteString(c, "0\r\n\r\n")
		case kind < 14:
			io.WriteString(c, okAnswer[:20])
			time.Sleep(5 * time.Millisecond)
			io.WriteString(c, okAnswer[20:])
		case kind < 16:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
			keep = false
		default:
			io.WriteString(c, okAnswer)
		}
		mu.Lock()
		byID[id].ok++
		mu.Unlock()
		return keep
	}
	addr := testutil.ServeRaw(t, func(c net.Conn, req *fasthttp.Request) bool {
		id := string(req.Header.Peek(HeaderID))
		attempt, _ := strconv.Atoi(string(req.Header.Peek(HeaderAttempt)))
		mu.Lock()
		s := byID[id]
		if s == nil {
			s = &seen{keys: map[string]bool{}}
			byID[id] = s
		}
		s.keys[string(req.Header.Peek(HeaderIdempotencyKey))] = true
		mu.Unlock()
		return answer(c, id, attempt)
	})
	_, q, _ := newQueue(t, "a")
	appendN(t, q, n, order)
	tg := testTarget("a", "http://"+addr)
	tg.Concurrency = 16
	tg.Retry.MaxAttempts = 10
	tg.Retry.Initial, tg.Retry.Max = ms, 5*ms
	d, _ := startDrainer(t, Config{Target: tg}, consumer(t, q, "a"))
	waitFor(t, 60*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })
	st := d.Stats()
	mu.Lock()
	defer mu.Unlock()
	if len(byID) != n {
		t.Fatalf("the downstream saw %d messages, want %d", len(byID), n)
	}
	for id, s := range byID {
		if s.ok != 1 || len(s.keys) != 1 {
			t.Fatalf("message %s: answered 2xx %d times, %d keys", id, s.ok, len(s.keys))
		}
	}
	if st.Dead != 0 || st.Delivered != n {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d attempts for %d messages", st.Attempts, n)
}
