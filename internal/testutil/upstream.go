package testutil

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// Serve serves srv on a new listener on 127.0.0.1 until the test ends (see
// ServeOn) and returns the listener's address (host:port).
func Serve(t testing.TB, srv *fasthttp.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeOn(t, ln, srv)
	return ln.Addr().String()
}

// ServeRaw serves HTTP/1.1 by hand on a new listener on 127.0.0.1 until the
// test ends, for tests of clients against answers no server would give (torn,
// slow, chunked by hand, a reset): each request of each connection is read
// with fasthttp and given to answer with the connection, which writes what it
// likes and returns false to end the connection. It returns the address.
func ServeRaw(t testing.TB, answer func(c net.Conn, req *fasthttp.Request) (keep bool)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var req fasthttp.Request
					if err := req.Read(br); err != nil || !answer(c, &req) {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// ServeOn serves srv on ln until the test ends, then shuts it down (waiting
// up to 5 s for its connections to finish) and waits for Serve to return.
func ServeOn(t testing.TB, ln net.Listener, srv *fasthttp.Server) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.ShutdownWithContext(ctx)
		<-done
	})
}

// Upstream is a server on 127.0.0.1 that stands for the service behind
// sluice (a passthrough upstream, a delivery target, a callback receiver):
// it records every request it receives, then answers it with the handler
// given to StartUpstream.
type Upstream struct {
	Addr string // host:port
	URL  string // "http://" + Addr

	mu   sync.Mutex
	reqs []Request
}

// Request is one request as an Upstream received it.
type Request struct {
	At     time.Time
	Method string
	Host   string
	URI    string      // as sent: path and query
	Header http.Header // canonical names
	Body   []byte
}

// String is "METHOD host uri".
func (r Request) String() string { return r.Method + " " + r.Host + " " + r.URI }

// StartUpstream runs an Upstream until the test ends. answer writes each
// answer after the request is recorded; nil answers 200 with no body (see
// Answer).
func StartUpstream(t testing.TB, answer fasthttp.RequestHandler) *Upstream {
	t.Helper()
	u := &Upstream{}
	u.Addr = Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		r := Request{
			At:     time.Now(),
			Method: string(ctx.Method()),
			Host:   string(ctx.Host()),
			URI:    string(ctx.RequestURI()),
			Header: http.Header{},
			Body:   bytes.Clone(ctx.PostBody()),
		}
		for k, v := range ctx.Request.Header.All() {
			r.Header.Add(string(k), string(v))
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, r)
		u.mu.Unlock()
		if answer != nil {
			answer(ctx)
		}
	}})
	u.URL = "http://" + u.Addr
	return u
}

// Answer returns a handler that answers status with body.
func Answer(status int, body string) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		ctx.SetStatusCode(status)
		ctx.SetBodyString(body)
	}
}

// Requests returns the requests received so far, in order.
func (u *Upstream) Requests() []Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Request(nil), u.reqs...)
}
