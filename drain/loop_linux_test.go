//go:build linux

package drain

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
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
