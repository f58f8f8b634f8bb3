//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"github.com/sluice-proxy/sluice/internal/h1"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/sluice-proxy/sluice/internal/netio"
	"github.com/sluice-proxy/sluice/policies"
)

// The event loops: the public listener's plain-HTTP connections are served
// by a few threads, each with its own epoll set, instead of a goroutine per
// connection on Go's poller. A passthrough request is relayed by its loop:
// one read of the request, one write upstream, one read of the answer, one
// write back; no goroutine parks or wakes, and no read finds nothing
// (level-triggered epoll: a socket is read once it is readable). On a
// 2-vCPU machine shared with the load generator and the upstream this is
// what passthrough needs to cost less than nginx (bench/passthrough.sh;
// bench/passfloor's -kind epoll is the same relay with no HTTP at all).
//
// The loops relay only what evparse.go accepts: a plain HTTP/1.1 request
// of up to 64 KiB (put together within read_timeout if it comes in pieces)
// to a passthrough route over http:// with no rate limit, answered with a
// Content-Length of up to 64 KiB or chunked and whole by the time it is
// read; and the same plain requests to a buffer route of the http protocol,
// within its max_body, which the loop stores (evstore_linux.go). At
// anything else (a spillover or log route, the status API, a chunked or
// large request body, a malformed byte) the connection is
// handed, with the bytes already read, to the fasthttp server that serves
// every connection without the loops: from then on it is served as it
// would have been, with all its checks and streaming. An answer the loop
// does not relay itself (large, HTTP/1.0, without a length, or chunked and
// still coming: a stream) is streamed by a goroutine with fasthttp's
// reader as it comes, and the connection is then handed over. TLS
// connections never go to the loops.
//
// Timeouts are those of the fasthttp path: idle_timeout between requests,
// read_timeout for the first, the route's timeout for the answer (504),
// write_timeout for writing it; they are checked when a loop wakes, which is
// at the earliest deadline (to the millisecond).

// engine is the accept loop and the event loops of one Serve.
type engine struct {
	s       *Server
	ln      *net.TCPListener
	lim     *limitListener
	hand    *handoffListener
	loops   []*evloop
	next    atomic.Uint32
	closing atomic.Bool
	owned   atomic.Int64  // client connections the loops or their streams hold
	done    chan struct{} // closed at shutdown: serve returns
	// What the loops did: requests relayed and answered whole, answers
	// streamed by a goroutine, connections handed to the fasthttp server,
	// buffer-route requests stored and answered.
	relayed, streamed, handed, stored atomic.Uint64
	stopped                           sync.Once
	appends                           sync.WaitGroup // the goroutines of batches being committed (evstore_linux.go)
}

// newEngine returns the event loops for ln, or nil when they cannot serve it
// (not TCP; the system refused an epoll set).
func newEngine(s *Server, ln net.Listener, lim *limitListener, n int) *engine {
	tl, ok := ln.(*net.TCPListener)
	if !ok || n <= 0 {
		return nil
	}
	e := &engine{s: s, ln: tl, lim: lim, hand: newHandoffListener(ln.Addr()), done: make(chan struct{})}
	inPoller := s.storesOnLoops() // see run
	for range n {
		l, err := newEvloop(e, inPoller)
		if err != nil {
			s.log.Warn("event loops unavailable; serving with a goroutine per connection", "err", err)
			for _, l := range e.loops {
				l.closeFDs()
			}
			return nil
		}
		e.loops = append(e.loops, l)
	}
	for _, l := range e.loops {
		go l.run()
	}
	return e
}

// serve accepts connections until shutdown: on the first loop, which
// watches a duplicate of the listener's socket (Go's poller keeps the
// original, and never reads it, since nobody calls Accept).
func (e *engine) serve() error {
	rc, err := e.ln.SyscallConn()
	if err != nil {
		return err
	}
	lfd := -1
	if cerr := rc.Control(func(fd uintptr) { lfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	l := e.loops[0]
	l.post(func(l *evloop) {
		a := &acceptor{fd: lfd}
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
			l.e.s.log.Error("event loop: cannot watch the listener", "err", err)
			unix.Close(lfd)
			return
		}
		l.fds.set(lfd, a)
	})
	<-e.done
	return nil
}

// acceptor is the listening socket, on the first loop.
type acceptor struct{ fd int }

func (a *acceptor) event(l *evloop, _ uint32) {
	e := l.e
	for range 64 {
		cfd, sa, err := unix.Accept4(a.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch err {
			case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
			default: // out of descriptors or memory: the next wake-up tries again
				e.s.log.Warn("accept failed", "err", err)
			}
			return
		}
		_ = unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if e.lim.open.Add(1) > e.lim.max {
			e.lim.open.Add(-1)
			unix.Write(cfd, e.lim.rejection())
			unix.Close(cfd)
			continue
		}
		var ip netip.AddrPort
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			ip = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			ip = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		}
		e.owned.Add(1)
		to := e.loops[int(e.next.Add(1))%len(e.loops)]
		if to == l {
			l.addClient(cfd, ip)
		} else {
			to.post(func(l *evloop) { l.addClient(cfd, ip) })
		}
	}
}

// shutdown stops accepting, closes idle connections, lets the requests in
// flight finish (their answers say Connection: close) until ctx ends, and
// stops the loops.
func (e *engine) shutdown(ctx context.Context) error {
	e.closing.Store(true)
	e.ln.Close()
	for _, l := range e.loops {
		l.post((*evloop).closeIdle)
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	var err error
	for e.owned.Load() > 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
		}
	}
	if err == nil { // a batch whose clients are gone is still awaited
		appended := make(chan struct{})
		go func() { e.appends.Wait(); close(appended) }()
		select {
		case <-appended:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	for _, l := range e.loops {
		l.post((*evloop).stop)
	}
	e.stopped.Do(func() { close(e.done) })
	return err
}

// give hands a connection the loops do not serve to the fasthttp server,
// with the bytes already read from it (pending: the caller's copy, kept).
func (e *engine) give(nc net.Conn, pending []byte) {
	if e.closing.Load() {
		nc.Close()
		e.lim.open.Add(-1)
		return
	}
	var c net.Conn = netio.NewConn(nc)
	if len(pending) > 0 {
		c = &prefixConn{Conn: c, prefix: pending}
	}
	e.hand.give(e.lim.serveConn(c))
}

// Connection states of a clientConn.
const (
	clientIdle     = iota // waiting for a request
	clientUpstream        // its request is with the upstream
	clientWriting         // its answer is being written
	clientStoring         // its request waits for its batch's commit (evstore_linux.go)
)

type evhandler interface {
	event(l *evloop, ev uint32)
}

// clientConn is a client's connection served by a loop.
type clientConn struct {
	fd       int
	ip       netip.Addr
	port     uint16
	peer     *loopPeer // its address as a fasthttp.RequestCtx sees it (evstore_linux.go), once it has stored a request
	state    int
	deadline time.Time
	in       []byte // bytes read after the request in flight
	outBuf   []byte
	out      []byte // the answer's bytes not yet written
	wantOut  bool   // EPOLLOUT asked for
	paused   bool   // EPOLLIN not asked for
	eof      bool   // the client has closed its side
	served   bool   // a request was answered on it
	reading  bool   // part of a request has come: read_timeout runs
	headSeen bool   // and all of its head

	// The request in flight.
	rt         *route
	req        []byte // as sent upstream, kept for one resend
	up         *upConn
	seq        uint64 // counts requests, so that a late dial knows its request is gone
	isHead     bool
	closeAfter bool
	idem       bool
	resent     bool
}

// upConn is a connection to a route's upstream, idle in its loop's pool or
// carrying one request.
type upConn struct {
	fd       int
	rt       *route
	c        *clientConn // nil when idle
	in       []byte      // the answer's bytes so far, when it took more than a read
	written  int         // bytes of c.req written
	wantOut  bool
	used     bool      // it carried an earlier request: it may be stale
	got      bool      // bytes of the answer have come
	deadline time.Time // idle: closed after it
}

// fdTable is a loop's connections by descriptor: a slice, since
// descriptors are small numbers, looked up at every event.
type fdTable struct{ h []evhandler }

func (t *fdTable) get(fd int) evhandler {
	if fd >= 0 && fd < len(t.h) {
		return t.h[fd]
	}
	return nil
}

func (t *fdTable) set(fd int, h evhandler) {
	if fd >= len(t.h) {
		t.h = append(t.h, make([]evhandler, fd+1-len(t.h)+len(t.h)/2)...)
	}
	t.h[fd] = h
}

func (t *fdTable) del(fd int) {
	if fd >= 0 && fd < len(t.h) {
		t.h[fd] = nil
	}
}

// evloop is one event loop: one thread, one epoll set, the connections on it.
type evloop struct {
	e      *engine
	ep     int
	epw    *netio.EpollWaiter // ep in Go's poller, when the loop waits there (run); nil: it blocks in epoll_wait
	wakefd int
	mu     sync.Mutex
	tasks  []func(*evloop)
	woken  atomic.Bool

	fds      fdTable
	pools    map[*route][]*upConn
	scratch  []byte
	req      fastRequest
	ans      fastAnswer
	now      time.Time
	date     []byte
	dateSec  int64
	nextScan time.Time
	stopped  bool
	ended    bool // under mu: run has returned; its descriptors are closed

	stores // the buffer-route requests of this turn and those being committed (evstore_linux.go)
}

func newEvloop(e *engine, inPoller bool) (*evloop, error) {
	ep, wfd, err := netio.NewEpoll()
	if err != nil {
		return nil, err
	}
	l := &evloop{e: e, ep: ep, wakefd: wfd, pools: map[*route][]*upConn{},
		scratch: make([]byte, 64<<10)}
	if inPoller {
		if l.epw, err = netio.NewEpollWaiter(ep); err != nil { // it takes ep, failing or not
			unix.Close(wfd)
			return nil, err
		}
	}
	return l, nil
}

func (l *evloop) closeFDs() {
	if l.epw != nil {
		l.epw.Close() // and with it ep
	} else {
		unix.Close(l.ep)
	}
	unix.Close(l.wakefd)
}

// post runs fn on the loop.
//
// Once the loop has ended, fn runs at once, under l.mu, on the stopped loop:
// the tasks (a connection accepted, an upstream dialed) then close what
// they bring.
func (l *evloop) post(fn func(*evloop)) {
	l.mu.Lock()
	if l.ended {
		fn(l)
		l.mu.Unlock()
		return
	}
	l.tasks = append(l.tasks, fn)
	// The wake-up is written under l.mu, while the loop has not ended: its
	// eventfd is closed when it ends, and the number may then name another
	// file (a segment's log, a socket).
	if l.woken.CompareAndSwap(false, true) {
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
	l.mu.Unlock()
}

// run is the loop. It waits for events in one of two ways, chosen for
// the engine by its policy (newEngine):
//   - When no route is stored on the loops (passthrough alone), it blocks
//     in epoll_wait(2) on a thread of its own: the quickest return to a
//     relay's next step.
//   - When buffer routes are (storesOnLoop), it waits in Go's poller
//     (netio.EpollWaiter), as the drainers' delivery loops do. The
//     goroutines that commit its batches (AppendDrafts, the store's
//     writer) need a processor while it waits, and a thread blocked in
//     epoll_wait keeps its own until the runtime's monitor takes it back
//     (20 µs to 10 ms later).
//
// Measured on 2 CPUs: waiting in the poller made durable buffered ingest
// faster in 5 of 6 alternating rounds (median 50.6k against 48.7k req/s,
// less CPU a request in 5 of 6, wrk -t2 -c256) and ingest while draining
// no slower (3 rounds), but passthrough 7-9% slower (33.9k against
// 35.7k req/s, 3 rounds of bench/passthrough.sh). Choosing it by the wake
// instead (the poller only while a batch is being committed) kept
// passthrough slow too: the epoll set in Go's poller wakes an idle thread
// on every event, whichever way the loop waits.
func (l *evloop) run() {
	if l.epw == nil {
		runtime.LockOSThread()
	}
	evs := make([]unix.EpollEvent, 256)
	var tasks []func(*evloop)
	var drain [8]byte
	for !l.stopped {
		var n int
		var err error
		if l.epw != nil {
			n, err = l.epw.Wait(evs, l.nextScan)
		} else {
			timeout := -1
			if !l.nextScan.IsZero() {
				// From the clock of the last wake-up: a wait a little longer
				// than needed, by what that wake-up's work took, saves a
				// clock read on each turn.
				timeout = max(int(l.nextScan.Sub(l.now)/time.Millisecond)+1, 0)
			}
			n, err = unix.EpollWait(l.ep, evs, timeout)
		}
		if err != nil && err != unix.EINTR {
			l.e.s.log.Error("event loop: epoll_wait failed", "err", err)
			l.stop()
			break
		}
		l.tick()
		for i := 0; i < n; i++ {
			ev := &evs[i]
			if int(ev.Fd) == l.wakefd {
				unix.Read(l.wakefd, drain[:])
				l.woken.Store(false)
				l.mu.Lock()
				tasks, l.tasks = l.tasks, tasks[:0]
				l.mu.Unlock()
				for _, fn := range tasks {
					fn(l)
				}
				clear(tasks)
				continue
			}
			if h := l.fds.get(int(ev.Fd)); h != nil {
				h.event(l, ev.Events)
			}
		}
		if len(l.batches) > 0 {
			l.commit()
		}
		if !l.nextScan.IsZero() && !l.now.Before(l.nextScan) {
			l.scan()
		}
	}
	l.mu.Lock()
	l.ended = true
	for _, fn := range l.tasks {
		fn(l)
	}
	l.tasks = nil
	l.closeFDs()
	l.mu.Unlock()
}

// tick reads the clock once per wake-up, and the Date answers carry.
func (l *evloop) tick() {
	l.now = time.Now()
	if s := l.now.Unix(); s != l.dateSec {
		l.dateSec = s
		l.date = appendHTTPDate(l.date[:0], l.now)
	}
}

// arm makes the loop wake by t.
func (l *evloop) arm(t time.Time) {
	if l.nextScan.IsZero() || t.Before(l.nextScan) {
		l.nextScan = t
	}
}

// scan acts on the deadlines passed and finds the next one.
func (l *evloop) scan() {
	l.nextScan = time.Time{}
	for _, h := range l.fds.h {
		switch x := h.(type) {
		case *clientConn:
			if x.deadline.IsZero() {
				continue
			}
			if !l.now.Before(x.deadline) {
				l.expire(x)
			} else {
				l.arm(x.deadline)
			}
		case *upConn:
			if x.c != nil {
				continue
			}
			if !l.now.Before(x.deadline) {
				l.closeUp(x)
			} else {
				l.arm(x.deadline)
			}
		}
	}
}

func (l *evloop) setDeadline(c *clientConn, d time.Duration) {
	c.deadline = l.now.Add(d)
	l.arm(c.deadline)
}

func (l *evloop) interest(fd int, in, out bool) {
	var ev uint32
	if in {
		ev |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if out {
		ev |= unix.EPOLLOUT
	}
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: ev, Fd: int32(fd)})
}

func (l *evloop) addClient(fd int, ip netip.AddrPort) {
	if l.stopped || l.e.closing.Load() {
		unix.Close(fd)
		l.e.lim.open.Add(-1)
		l.e.owned.Add(-1)
		return
	}
	c := &clientConn{fd: fd, ip: ip.Addr(), port: ip.Port()}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		l.e.lim.open.Add(-1)
		l.e.owned.Add(-1)
		return
	}
	l.fds.set(fd, c)
	l.tick()
	l.setDeadline(c, l.e.s.readTimeout)
}

func (c *clientConn) event(l *evloop, ev uint32) {
	if ev&unix.EPOLLOUT != 0 && c.state == clientWriting {
		l.flushClient(c)
		if l.fds.get(c.fd) != c {
			return
		}
	}
	switch {
	case ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.paused:
		l.readClient(c)
	case ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0:
		// Not read, yet reported at every wake-up (level-triggered):
		// the client is gone both ways, so is its answer.
		l.closeClient(c)
	}
}

// readMore reads from fd what fits after buf's bytes, growing it first if
// less than 4 KiB is free, and returns buf with what was read.
func readMore(fd int, buf []byte) ([]byte, int, syscall.Errno) {
	if cap(buf)-len(buf) < 4096 {
		buf = append(buf, make([]byte, 16<<10)...)[:len(buf)]
	}
	n, err := netio.RawRead(fd, buf[len(buf):cap(buf)])
	if err != 0 || n <= 0 {
		return buf, 0, err
	}
	return buf[:len(buf)+n], n, 0
}

// keepBuf is the largest buffer a connection keeps between requests.
const keepBuf = 16 << 10

// maxPipelined bounds the bytes a client may send ahead of the answer in
// flight; beyond, its connection is not read until the answer is written.
const maxPipelined = 64 << 10

func (l *evloop) readClient(c *clientConn) {
	if c.state == clientIdle && len(c.in) == 0 {
		n, err := netio.RawRead(c.fd, l.scratch)
		if err == unix.EAGAIN || err == unix.EINTR {
			return
		}
		if err != 0 || n <= 0 {
			l.closeClient(c)
			return
		}
		l.serve(c, l.scratch[:n])
		return
	}
	var n int
	var err syscall.Errno
	c.in, n, err = readMore(c.fd, c.in)
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if err != 0 || n <= 0 {
		c.eof = true
		c.paused = true
		l.interest(c.fd, false, c.wantOut)
		if c.state == clientIdle {
			l.serve(c, c.in) // what came before the end
		}
		return
	}
	if c.state == clientIdle {
		if c.reading && !c.headSeen && bytes.IndexByte(c.in[len(c.in)-n:], '\n') < 0 && len(c.in) < int(l.e.s.maxHeader) {
			return // the head cannot have ended: no parse of it again (a client sending a byte at a time would make that quadratic)
		}
		l.serve(c, c.in)
	} else if len(c.in) >= maxPipelined {
		c.paused = true
		l.interest(c.fd, false, c.wantOut)
	}
}

// serve relays the request at the start of b, or hands the connection over.
func (l *evloop) serve(c *clientConn, b []byte) {
	if len(b) == 0 {
		if c.eof {
			l.closeClient(c)
		}
		return
	}
	r := &l.req
	res := r.parse(b)
	if res == h1.More && r.Size > 0 {
		if _, _, kind := l.e.s.loopRoute(r); kind == loopNone {
			res = h1.Other // not the loop's: the fasthttp path answers it, body or none
		}
	}
	if res == h1.More && !c.eof && (r.Size > 0 || len(b) < int(l.e.s.maxHeader)) {
		// The rest is on its way: read_timeout from the first byte.
		c.in = append(c.in[:0], b...)
		c.headSeen = r.Size > 0
		if !c.reading {
			c.reading = true
			l.setDeadline(c, l.e.s.readTimeout)
		}
		return
	}
	if res != h1.OK || c.eof {
		l.handOff(c, b)
		return
	}
	c.reading, c.headSeen = false, false
	rt, uri, kind := l.e.s.loopRoute(r)
	switch kind {
	case loopNone:
		l.handOff(c, b)
		return
	case loopStore:
		l.store(c, b, rt)
		return
	}
	c.seq++
	c.rt, c.isHead, c.closeAfter, c.idem, c.resent = rt, string(r.method) == fasthttp.MethodHead, r.conn.Close, r.idempotent(), false
	c.req = r.appendUpstream(c.req[:0], b, rt, uri, c.ip)
	if rest := b[r.total():]; len(rest) > 0 {
		c.in = append(c.in[:0], rest...)
	} else {
		c.in = c.in[:0]
	}
	c.state = clientUpstream
	l.setDeadline(c, upstreamTimeout(rt))
	l.send(c)
}

// What the loop does with a request (loopRoute).
const (
	loopNone  = iota // hand the connection to the fasthttp server
	loopRelay        // relay it to its passthrough route's upstream
	loopStore        // store it in its buffer route's queue (evstore_linux.go)
)

// loopRoute returns the route of r and what the loop does with r on it,
// with r's normalised request-URI: a plain passthrough route (http://, no
// rate limit) is relayed, a buffer route of the http protocol stored; the
// body within the route's max_body (over it, the fasthttp path refuses it
// before reading it). Anything else is loopNone.
func (s *Server) loopRoute(r *fastRequest) (rt *route, uri []byte, kind int) {
	uri, ok := normalizeURI(r.target)
	if !ok {
		return nil, nil, loopNone
	}
	path := pathPart(uri)
	if bytes.HasPrefix(path, []byte(StatusPrefix)) {
		return nil, nil, loopNone
	}
	rt, allowed := s.match(r.method, r.host, path)
	if rt == nil && allowed == nil {
		rt = s.fallback
	}
	if rt == nil || int64(r.length) > rt.MaxBody {
		return nil, nil, loopNone
	}
	switch {
	case rt.Mode == policies.ModePassthrough && rt.limiter == nil && rt.upstream != nil && !rt.upstream.IsTLS:
		return rt, uri, loopRelay
	case storesOnLoop(rt) && string(r.method) != fasthttp.MethodHead:
		return rt, uri, loopStore
	}
	return nil, nil, loopNone
}

func upstreamTimeout(rt *route) time.Duration {
	if rt.Timeout > 0 {
		return rt.Timeout
	}
	return policies.DefaultUpstreamTimeout
}

// send writes c's request on an idle pooled connection, or dials one.
func (l *evloop) send(c *clientConn) {
	pool := l.pools[c.rt]
	if len(pool) == 0 {
		l.dial(c)
		return
	}
	up := pool[len(pool)-1]
	pool[len(pool)-1] = nil
	l.pools[c.rt] = pool[:len(pool)-1]
	l.attach(c, up)
}

func (l *evloop) attach(c *clientConn, up *upConn) {
	up.c, c.up = c, up
	up.written, up.got, up.in = 0, false, up.in[:0]
	l.flushUp(up)
}

func (l *evloop) flushUp(up *upConn) {
	c := up.c
	for up.written < len(c.req) {
		n, err := netio.RawWrite(up.fd, c.req[up.written:])
		if err == unix.EAGAIN || err == unix.EINTR {
			if !up.wantOut {
				up.wantOut = true
				l.interest(up.fd, true, true)
			}
			return
		}
		if err != 0 {
			l.upFailed(up, err)
			return
		}
		up.written += n
	}
	if up.wantOut {
		up.wantOut = false
		l.interest(up.fd, true, false)
	}
}

// dial connects to c's upstream off the loop (fasthttp.Dial: its timeout
// and DNS cache, as the fasthttp path's pool), and sends c's request on it.
func (l *evloop) dial(c *clientConn) {
	rt, seq := c.rt, c.seq
	addr := rt.upstream.Addr
	go func() {
		fd := -1
		nc, err := fasthttp.Dial(addr)
		if err == nil {
			fd, err = netio.DetachFD(nc)
		}
		l.post(func(l *evloop) { l.dialed(c, seq, rt, fd, err) })
	}()
}

func (l *evloop) dialed(c *clientConn, seq uint64, rt *route, fd int, err error) {
	waiting := l.fds.get(c.fd) == c && c.seq == seq && c.state == clientUpstream && c.up == nil
	if err != nil {
		if waiting {
			l.e.s.log.Warn("passthrough failed", "route", rt.Name, "err", err)
			l.answerError(c, fasthttp.StatusBadGateway, "upstream_unreachable", "upstream of route "+rt.Name+": "+err.Error())
		}
		return
	}
	if l.stopped {
		unix.Close(fd)
		return
	}
	up := &upConn{fd: fd, rt: rt}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		if waiting {
			l.answerError(c, fasthttp.StatusBadGateway, "upstream_unreachable", "upstream of route "+rt.Name+": "+err.Error())
		}
		return
	}
	l.fds.set(fd, up)
	if waiting {
		l.attach(c, up)
	} else {
		l.putIdle(up)
	}
}

func (up *upConn) event(l *evloop, ev uint32) {
	if ev&unix.EPOLLOUT != 0 && up.c != nil && up.wantOut {
		l.flushUp(up)
		if l.fds.get(up.fd) != up {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.readUp(up)
	}
}

func (l *evloop) readUp(up *upConn) {
	c := up.c
	if c == nil { // idle: the upstream closed it, or sent what nobody asked for
		l.closeUp(up)
		return
	}
	var b []byte
	if len(up.in) == 0 {
		n, err := netio.RawRead(up.fd, l.scratch)
		if err == unix.EAGAIN || err == unix.EINTR {
			return
		}
		if err != 0 || n <= 0 {
			l.upFailed(up, errClosedEarly(err))
			return
		}
		b = l.scratch[:n]
	} else {
		var n int
		var err syscall.Errno
		up.in, n, err = readMore(up.fd, up.in)
		if err == unix.EAGAIN || err == unix.EINTR {
			return
		}
		if err != 0 || n <= 0 {
			l.upFailed(up, errClosedEarly(err))
			return
		}
		b = up.in
	}
	up.got = true
	a := &l.ans
	switch a.parse(b, c.isHead) {
	case h1.More:
		if len(up.in) == 0 {
			up.in = append(up.in, b...)
		}
		if a.Size == 0 && len(b) > int(l.e.s.maxHeader) {
			l.stream(up, b) // fasthttp's reader refuses it as the fasthttp path would
		}
		return
	case h1.Other:
		l.stream(up, b)
		return
	}
	closing := c.closeAfter || c.eof || l.e.closing.Load()
	c.outBuf = a.appendClient(c.outBuf[:0], b, l.date, closing)
	c.out = c.outBuf
	c.closeAfter = closing
	unsent := up.written < len(c.req) // answered before it took the whole request
	up.c, c.up = nil, nil
	up.used = true
	if up.wantOut {
		up.wantOut = false
		l.interest(up.fd, true, false)
	}
	if a.conn.Close || len(b) > a.total() || unsent {
		l.closeUp(up)
	} else {
		l.putIdle(up)
	}
	c.state = clientWriting
	l.setDeadline(c, l.e.s.srv.WriteTimeout)
	l.e.relayed.Add(1)
	l.flushClient(c)
}

// errClosedEarly is the error of an upstream connection that ended (or
// failed) before its answer was whole.
func errClosedEarly(errno syscall.Errno) error {
	if errno == 0 {
		return io.ErrUnexpectedEOF
	}
	return errno
}

// upFailed ends an upstream connection that failed: a request that got no
// byte of an answer on a pooled connection is sent once more if it is
// idempotent (retryStale's rule); else the client gets 502.
func (l *evloop) upFailed(up *upConn, err error) {
	c := up.c
	l.closeUp(up)
	if c == nil {
		return
	}
	c.up = nil
	if !up.got && up.used && c.idem && !c.resent {
		c.resent = true
		l.send(c)
		return
	}
	l.e.s.log.Warn("passthrough failed", "route", c.rt.Name, "err", err)
	l.answerError(c, fasthttp.StatusBadGateway, "upstream_unreachable", "upstream of route "+c.rt.Name+": "+err.Error())
}

func (l *evloop) putIdle(up *upConn) {
	up.c = nil
	up.in = up.in[:0]
	if cap(up.in) > keepBuf {
		up.in = nil
	}
	if l.e.closing.Load() || len(l.pools[up.rt]) >= 1024 {
		l.closeUp(up)
		return
	}
	idle := up.rt.upstream.MaxIdleConnDuration
	if idle <= 0 {
		idle = 30 * time.Second
	}
	up.deadline = l.now.Add(idle)
	l.arm(up.deadline)
	l.pools[up.rt] = append(l.pools[up.rt], up)
}

func (l *evloop) closeUp(up *upConn) {
	if l.fds.get(up.fd) == up {
		l.fds.del(up.fd)
		unix.Close(up.fd)
	}
	if up.c == nil {
		pool := l.pools[up.rt]
		for i, p := range pool {
			if p == up {
				l.pools[up.rt] = append(pool[:i], pool[i+1:]...)
				break
			}
		}
	}
}

// answerError answers c's request with a JSON error.
func (l *evloop) answerError(c *clientConn, status int, code, msg string) {
	if c.up != nil {
		up := c.up
		c.up, up.c = nil, nil
		l.closeUp(up)
	}
	closing := c.closeAfter || c.eof || l.e.closing.Load()
	c.outBuf = appendErrorAnswer(c.outBuf[:0], status, code, msg, l.date, closing)
	c.out = c.outBuf
	c.closeAfter = closing
	c.state = clientWriting
	l.setDeadline(c, l.e.s.srv.WriteTimeout)
	l.flushClient(c)
}

func (l *evloop) flushClient(c *clientConn) {
	for len(c.out) > 0 {
		n, err := netio.RawWrite(c.fd, c.out)
		if err == unix.EAGAIN || err == unix.EINTR {
			if !c.wantOut {
				c.wantOut = true
				l.interest(c.fd, !c.paused, true)
			}
			return
		}
		if err != 0 {
			l.closeClient(c)
			return
		}
		c.out = c.out[n:]
	}
	if c.wantOut {
		c.wantOut = false
		l.interest(c.fd, !c.paused, false)
	}
	c.served = true
	// An idle connection keeps small buffers: one large request or answer
	// does not stay with it.
	if cap(c.outBuf) > keepBuf {
		c.outBuf, c.out = nil, nil
	}
	if cap(c.req) > keepBuf {
		c.req = nil
	}
	if len(c.in) == 0 && cap(c.in) > keepBuf {
		c.in = nil
	}
	if c.closeAfter || l.e.closing.Load() {
		l.closeClient(c)
		return
	}
	c.state = clientIdle
	l.setDeadline(c, l.e.s.srv.IdleTimeout)
	if c.paused && !c.eof {
		c.paused = false
		l.interest(c.fd, true, false)
	}
	if len(c.in) > 0 || c.eof {
		l.serve(c, c.in)
	}
}

// expire acts on a client connection whose deadline has passed.
func (l *evloop) expire(c *clientConn) {
	switch {
	case c.state == clientIdle && c.reading:
		c.in = c.in[:0]
		c.closeAfter = true
		l.answerError(c, fasthttp.StatusRequestTimeout, "timeout", "request not received in time")
	case c.state == clientUpstream:
		l.e.s.log.Warn("passthrough failed", "route", c.rt.Name, "err", fasthttp.ErrTimeout)
		l.answerError(c, fasthttp.StatusGatewayTimeout, "upstream_timeout", "upstream of route "+c.rt.Name+": "+fasthttp.ErrTimeout.Error())
	default: // idle too long, or not reading its answer
		l.closeClient(c)
	}
}

func (l *evloop) closeClient(c *clientConn) {
	if l.fds.get(c.fd) != c {
		return
	}
	l.fds.del(c.fd)
	unix.Close(c.fd)
	if c.up != nil {
		up := c.up
		c.up, up.c = nil, nil
		l.closeUp(up)
	}
	l.e.lim.open.Add(-1)
	l.e.owned.Add(-1)
}

// release takes fd off the loop, for netio.FileConn (it is non-blocking
// since accept4 or the dial).
func (l *evloop) release(fd int) int {
	l.fds.del(fd)
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil)
	return fd
}

// handOff gives c to the fasthttp server with b, the bytes read and not
// handled.
func (l *evloop) handOff(c *clientConn, b []byte) {
	pending := bytes.Clone(b)
	l.e.handed.Add(1)
	nc, err := netio.FileConn(l.release(c.fd))
	l.e.owned.Add(-1)
	if err != nil {
		l.e.lim.open.Add(-1)
		return
	}
	l.e.give(nc, pending)
}

// stream hands an answer the loop does not relay itself, of which b has
// come, to a goroutine that relays it as the fasthttp path does, and then
// hands the client's connection to the fasthttp server.
func (l *evloop) stream(up *upConn, b []byte) {
	c := up.c
	got := bytes.Clone(b)
	rest := bytes.Clone(c.in)
	closing := c.closeAfter || c.eof || l.e.closing.Load()
	isHead, rt, deadline := c.isHead, c.rt, c.deadline
	un, uerr := netio.FileConn(l.release(up.fd))
	cn, cerr := netio.FileConn(l.release(c.fd))
	up.c, c.up = nil, nil
	if cerr != nil {
		if un != nil {
			un.Close()
		}
		l.e.lim.open.Add(-1)
		l.e.owned.Add(-1)
		return
	}
	l.e.streamed.Add(1)
	go l.e.relayAnswer(cn, un, uerr, got, rest, isHead, closing, rt, deadline)
}

func (e *engine) relayAnswer(cn, un net.Conn, uerr error, got, rest []byte, isHead, closing bool, rt *route, deadline time.Time) {
	release := func() {
		cn.Close()
		e.lim.open.Add(-1)
		e.owned.Add(-1)
	}
	res := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(res)
	res.StreamBody = true
	res.SkipBody = isHead
	err := uerr
	if err == nil {
		defer un.Close()
		un.SetReadDeadline(deadline)
		err = res.Read(bufio.NewReader(io.MultiReader(bytes.NewReader(got), un)))
	}
	cn.SetWriteDeadline(time.Now().Add(e.s.srv.WriteTimeout))
	bw := bufio.NewWriter(cn)
	if err != nil {
		status, code := fasthttp.StatusBadGateway, "upstream_unreachable"
		if errors.Is(err, fasthttp.ErrTimeout) || os.IsTimeout(err) {
			status, code = fasthttp.StatusGatewayTimeout, "upstream_timeout"
		}
		e.s.log.Warn("passthrough failed", "route", rt.Name, "err", err)
		var date []byte
		bw.Write(appendErrorAnswer(nil, status, code, "upstream of route "+rt.Name+": "+err.Error(), appendHTTPDate(date, time.Now()), closing))
		if bw.Flush() != nil || closing {
			release()
			return
		}
	} else {
		stripHopResponse(&res.Header)
		if len(res.Header.Server()) == 0 {
			res.Header.SetServer("sluice")
		}
		if closing {
			res.SetConnectionClose()
		}
		werr := res.Write(bw)
		if werr == nil {
			werr = bw.Flush()
		}
		if werr != nil || closing || e.closing.Load() {
			release()
			return
		}
	}
	cn.SetDeadline(time.Time{})
	e.owned.Add(-1)
	e.give(cn, rest)
}

// closeIdle closes the connections waiting for a request, at shutdown; the
// others close once their answer is written.
func (l *evloop) closeIdle() {
	for fd, h := range l.fds.h {
		switch x := h.(type) {
		case *clientConn:
			if x.state == clientIdle {
				l.closeClient(x)
			}
		case *acceptor:
			l.fds.del(fd)
			unix.Close(x.fd)
		}
	}
	for _, pool := range l.pools {
		for _, up := range pool {
			l.closeUp(up)
		}
	}
}

// stop closes what is left and ends the loop.
func (l *evloop) stop() {
	for fd, h := range l.fds.h {
		switch x := h.(type) {
		case *acceptor:
			l.fds.del(fd)
			unix.Close(x.fd)
		case *clientConn:
			l.closeClient(x)
		case *upConn:
			x.c = nil
			l.closeUp(x)
		}
	}
	l.stopped = true
}

// LoopCounts returns what the event loops did since Serve began.
func (s *Server) LoopCounts() LoopCounts {
	e := s.engine.Load()
	if e == nil {
		return LoopCounts{}
	}
	return LoopCounts{Relayed: e.relayed.Load(), Streamed: e.streamed.Load(), Stored: e.stored.Load(), HandedOver: e.handed.Load()}
}
