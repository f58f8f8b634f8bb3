//go:build linux

package drain

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/sluice-proxy/sluice/internal/h1"
	"github.com/sluice-proxy/sluice/internal/netio"
	"github.com/sluice-proxy/sluice/store"
)

// loopSupported: see loop_other.go.
const loopSupported = true

// loop makes a drainer's HTTP attempts from one goroutine with an epoll
// set of its own, instead of a goroutine per attempt parked in the fasthttp
// client: the run loop's launch queues each attempt (submit), the loop
// writes its request on a keep-alive connection and reads the answer when
// the socket has it. No goroutine parks and wakes per message, which on a
// busy machine is most of what a delivery costs beyond its two system
// calls (bench/blast -epoll against the fasthttp client: ~10 against ~17
// CPU µs a request).
//
// What it reads itself is loopAnswer's subset (answer.go); any other answer
// is finished by a goroutine with fasthttp's reader, exactly as the worker
// path reads it (readOther); its connection comes back to the loop if that
// answer was read to its end and may be reused, else is closed. Dials run
// in goroutines (fasthttp.DialTimeout, as the worker path's client) and hand
// the socket to the loop. The rules are the worker path's: one attempt is
// one request, never sent again by the client; the attempt ends at the
// target's timeout (dial, write and answer together; the connection is
// then closed); an idle connection is closed after idleTimeout or when the
// target closes it; a failure is reported with the errors fasthttp gives
// (classify reads both alike).
//
// Used for targets whose attempts are plain requests over http:// (not
// batches, not capture_response; see useLoop), with ceil(Concurrency/32)
// loops (connsPerLoop). Cost per loop: a goroutine (parked in Go's poller
// while its target is idle), an epoll set, an eventfd and a 64 KiB read
// buffer; connections as the worker path, at most Concurrency in all.
type loop struct {
	r    *runner
	d    *Drainer
	ep   int
	epw  *netio.EpollWaiter // waits for ep's events in Go's poller
	wake int                // eventfd: submit and the dials wake the loop

	maxConns int          // connections it may open: its share of Concurrency
	busy     atomic.Int64 // attempts submitted to it and not yet reported: for pickLoop

	mu    sync.Mutex
	tasks []func()
	jobs  []job // submitted, not yet started
	ended bool  // under mu: run has returned
	woken atomic.Bool

	conns   map[int]*lconn // every open connection, by descriptor
	idle    []*lconn       // open, no attempt: the last used at the end
	waiting []*pending     // attempts waiting for a connection, in order
	free    []*pending     // records of attempts over, for newPending
	dialing int
	quit    bool

	buf     []byte // read buffer
	bw      *bufio.Writer
	req     *fasthttp.Request
	ans     loopAnswer
	evs     *[]event // this turn's results, for handOver; nil if none
	recs    *[]recItem
	nextDue time.Time // the earliest deadline armed; zero: none
	done    chan struct{}
}

// pending is an attempt not yet answered.
type pending struct {
	j        job
	at       time.Time // when it started, by the drainer's clock
	deadline time.Time // by the real clock
	head     bool      // a HEAD request: its answer has no body
}

// lconn is one connection to the target.
type lconn struct {
	fd       int
	p        *pending     // the attempt on it; nil while idle
	wire     bytes.Buffer // its request, as the fasthttp client writes it
	out      []byte       // the request's bytes not yet written
	wantOut  bool         // EPOLLOUT is asked for
	in       []byte       // an answer's bytes read so far, while its head is incomplete
	res      result       // the answer's, once its head is read
	left     int          // body bytes still to read (and drop) once the head is read
	reuse    bool         // the answer lets the connection carry another request
	idleFrom time.Time    // when it became idle
}

// idleTimeout closes a connection idle this long (fasthttp's HostClient
// default, which the worker path has).
const idleTimeout = 10 * time.Second

// loopBuffer is the read buffer: an answer whose head and chunked body do
// not fit is read by readOther.
const loopBuffer = 64 << 10

func newLoop(r *runner, maxConns int) (*loop, error) {
	ep, wfd, err := netio.NewEpoll()
	if err != nil {
		return nil, err
	}
	// The loop waits for its epoll set through Go's poller (netio.EpollWaiter).
	w, err := netio.NewEpollWaiter(ep) // it takes ep, failing or not
	if err != nil {
		unix.Close(wfd)
		return nil, err
	}
	l := &loop{r: r, d: r.d, ep: ep, epw: w, wake: wfd, conns: map[int]*lconn{}, maxConns: maxConns,
		buf: make([]byte, loopBuffer), req: new(fasthttp.Request), done: make(chan struct{})}
	l.bw = bufio.NewWriterSize(io.Discard, 4<<10)
	go l.run()
	return l, nil
}

// post runs fn on the loop. Once the loop has ended, fn runs at once,
// under l.mu: the tasks then close what they bring (a dialed connection).
func (l *loop) post(fn func()) {
	l.mu.Lock()
	if l.ended {
		fn()
		l.mu.Unlock()
		return
	}
	l.tasks = append(l.tasks, fn)
	l.wakeUp()
	l.mu.Unlock()
}

// wakeUp wakes the loop if it is not being woken already. Under l.mu,
// while the loop has not ended: its eventfd is closed when it ends, and
// the number may then name another file.
func (l *loop) wakeUp() {
	if l.woken.CompareAndSwap(false, true) {
		one := [8]byte{1}
		unix.Write(l.wake, one[:])
	}
}

// submit starts j's attempt on the loop (queued as a job, not a task: no
// allocation an attempt). Run submits only while the loop runs.
func (l *loop) submit(j job) {
	l.busy.Add(1)
	l.mu.Lock()
	l.jobs = append(l.jobs, j)
	if !l.ended {
		l.wakeUp()
	}
	l.mu.Unlock()
}

// close ends the loop once nothing is under way (Run's end): it closes
// every connection and waits for the thread to return.
func (l *loop) close() {
	l.post(func() { l.quit = true })
	<-l.done
}

func (l *loop) run() {
	defer close(l.done)
	evs := make([]unix.EpollEvent, 128)
	var tasks []func()
	var jobs []job
	var drain [8]byte
	lastScan := time.Now()
	for !l.quit {
		until := l.nextDue
		if until.IsZero() && len(l.idle) > 0 {
			until = lastScan.Add(time.Second)
		}
		n, err := l.epw.Wait(evs, until)
		if err != nil {
			l.d.log.Error("delivery loop: epoll_wait failed", "err", err)
			time.Sleep(10 * time.Millisecond) // not a spin; the next wait may work
			continue
		}
		for i := 0; i < n; i++ {
			ev := &evs[i]
			fd := int(ev.Fd)
			if fd == l.wake {
				unix.Read(l.wake, drain[:])
				l.woken.Store(false)
				l.mu.Lock()
				tasks, l.tasks = l.tasks, tasks[:0]
				jobs, l.jobs = l.jobs, jobs[:0]
				l.mu.Unlock()
				for _, fn := range tasks {
					fn()
				}
				clear(tasks)
				for _, j := range jobs {
					l.start(j)
				}
				clear(jobs)
				continue
			}
			c := l.conns[fd]
			if c == nil {
				continue
			}
			if ev.Events&unix.EPOLLOUT != 0 && len(c.out) > 0 {
				l.flush(c)
				if l.conns[fd] != c {
					continue
				}
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				l.read(c)
			}
		}
		if now := time.Now(); (!l.nextDue.IsZero() && !now.Before(l.nextDue)) || now.Sub(lastScan) >= time.Second {
			l.scan(now)
			lastScan = now
		}
		l.handOver()
	}
	l.mu.Lock()
	l.ended = true
	for _, fn := range l.tasks {
		fn()
	}
	l.tasks = nil
	for fd := range l.conns {
		unix.Close(fd)
	}
	l.conns, l.idle = map[int]*lconn{}, nil
	l.epw.Close()
	unix.Close(l.wake)
	l.mu.Unlock()
}

// start sends j's request on an idle connection, or on a new one.
func (l *loop) start(j job) {
	d := l.d
	d.attempts.Add(1)
	d.sending.Add(1)
	p := l.newPending()
	*p = pending{j: j, at: d.now(), deadline: time.Now().Add(d.target.Timeout), head: j.dl.Method == fasthttp.MethodHead}
	l.arm(p.deadline)
	if k := len(l.idle); k > 0 {
		c := l.idle[k-1]
		l.idle = l.idle[:k-1]
		l.send(c, p)
		return
	}
	l.waiting = append(l.waiting, p)
	l.dialMore()
}

// newPending returns an attempt's record from the loop's free list, or a
// new one.
func (l *loop) newPending() *pending {
	if k := len(l.free); k > 0 {
		p := l.free[k-1]
		l.free[k-1] = nil
		l.free = l.free[:k-1]
		return p
	}
	return new(pending)
}

// freePending puts p, whose attempt is reported and which nothing else
// holds, on the free list: at full speed an answer a turn otherwise
// allocates one. The list is as long as the loop's connections at most.
func (l *loop) freePending(p *pending) {
	if len(l.free) < l.maxConns {
		*p = pending{}
		l.free = append(l.free, p)
	}
}

// dialMore dials for the attempts waiting, up to the loop's share of the
// target's connections (maxConns).
func (l *loop) dialMore() {
	for l.dialing < len(l.waiting) && len(l.conns)+l.dialing < l.maxConns {
		l.dialing++
		addr, timeout := l.d.ep.addr, l.d.target.Timeout
		go func() {
			fd := -1
			nc, err := fasthttp.DialTimeout(addr, timeout)
			if err == nil {
				fd, err = netio.DetachFD(nc)
			}
			l.post(func() { l.dialed(fd, err) })
		}()
	}
}

// dialed takes a new connection (fd), or a failed dial, for the first
// attempt waiting; one that waits no more (it timed out) leaves the
// connection idle.
func (l *loop) dialed(fd int, err error) {
	l.dialing--
	if err != nil {
		if len(l.waiting) > 0 {
			p := l.waiting[0]
			l.waiting = l.waiting[1:]
			l.finish(p, result{err: err})
		}
		l.dialMore()
		return
	}
	l.adopt(fd)
}

// adopt takes an open connection to the target (fd) onto the loop, for the
// first attempt waiting or as an idle one.
func (l *loop) adopt(fd int) {
	if l.quit || l.ended {
		unix.Close(fd)
		return
	}
	c := &lconn{fd: fd}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		if len(l.waiting) > 0 {
			p := l.waiting[0]
			l.waiting = l.waiting[1:]
			l.finish(p, result{err: err})
		}
		return
	}
	l.conns[fd] = c
	l.ready(c)
}

// ready gives an open connection with no attempt to the first attempt
// waiting, or makes it idle.
func (l *loop) ready(c *lconn) {
	if len(l.waiting) > 0 {
		p := l.waiting[0]
		l.waiting[0] = nil
		l.waiting = l.waiting[1:]
		l.send(c, p)
		return
	}
	c.idleFrom = time.Now()
	l.idle = append(l.idle, c)
}

// send writes p's request on c: what the fasthttp client writes for it.
func (l *loop) send(c *lconn, p *pending) {
	c.p, c.in, c.left, c.reuse, c.res = p, c.in[:0], 0, false, result{}
	l.req.Reset()
	buildRequest(l.req, &l.d.ep, p.j.dl)
	l.req.URI().DisablePathNormalizing = true // as the fasthttp client is told (New)
	c.wire.Reset()
	l.bw.Reset(&c.wire)
	l.req.Write(l.bw) // into memory: it cannot fail
	l.bw.Flush()
	l.req.SetBodyRaw(nil) // not the message's body beyond this
	c.out = c.wire.Bytes()
	l.flush(c)
}

// flush writes what is left of c's request.
func (l *loop) flush(c *lconn) {
	for len(c.out) > 0 {
		n, errno := netio.RawWrite(c.fd, c.out)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			if !c.wantOut {
				l.interest(c, true)
			}
			return
		case errno != 0:
			l.fail(c, &net.OpError{Op: "write", Net: "tcp", Err: errno})
			return
		}
		c.out = c.out[n:]
		if len(c.out) == 0 && c.wantOut {
			l.interest(c, false)
		}
	}
}

func (l *loop) interest(c *lconn, out bool) {
	c.wantOut = out
	ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if out {
		ev |= unix.EPOLLOUT
	}
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: ev, Fd: int32(c.fd)})
}

// read reads what c has: an idle connection's end (or bytes nobody asked
// for: it is closed), or the answer to its attempt.
func (l *loop) read(c *lconn) {
	if c.p == nil {
		l.closeConn(c)
		return
	}
	for {
		b := l.buf
		if c.left == 0 {
			b = append(l.buf[:0], c.in...) // the head so far, then what comes
		} else {
			b = b[:0]
		}
		n, errno := netio.RawRead(c.fd, b[len(b):cap(b)])
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EAGAIN {
			return
		}
		if errno != 0 || n == 0 {
			l.fail(c, closedEarly(errno, c.left > 0 || len(c.in) > 0))
			return
		}
		if c.left > 0 { // the body of an answer already known
			if n > c.left {
				c.reuse = false // more than the answer: nobody asked for it
				n = c.left
			}
			c.left -= n
			if c.left == 0 {
				l.answered(c)
				return
			}
			continue
		}
		b = b[:len(b)+n]
		switch l.ans.parse(b, c.p.head) {
		case h1.More:
			if len(b) == cap(b) {
				l.other(c, b)
				return
			}
			c.in = append(c.in[:0], b...)
			continue
		case h1.Other:
			l.other(c, b)
			return
		}
		a := &l.ans
		c.in = c.in[:0]
		c.res = result{status: a.status}
		if (a.status == fasthttp.StatusTooManyRequests || a.status == fasthttp.StatusServiceUnavailable) && a.retryAfter != nil {
			if ra, ok := ParseRetryAfter(string(a.retryAfter), l.d.now()); ok {
				c.res.retryAfter = ra
			}
		}
		got := len(b) - a.Size
		c.reuse = !a.close && got <= a.length
		if got >= a.length {
			l.answered(c)
			return
		}
		c.left = a.length - got
	}
}

// closedEarly is the error of a connection that ended (errno 0: closed)
// or failed before its answer's head was whole, as the fasthttp client
// reports it: any failure before the first byte is a closed connection.
func closedEarly(errno syscall.Errno, started bool) error {
	switch {
	case !started:
		return fasthttp.ErrConnectionClosed
	case errno != 0:
		return &net.OpError{Op: "read", Net: "tcp", Err: errno}
	}
	return io.ErrUnexpectedEOF
}

// answered ends c's attempt with the answer read, and gives c to the
// chain's next message, or the next attempt waiting, or the idle ones.
func (l *loop) answered(c *lconn) {
	p, res := c.p, c.res
	c.p = nil
	res.at = p.at
	res.dur = l.d.now().Sub(p.at)
	next := l.report(p, res)
	l.freePending(p)
	if !c.reuse {
		l.closeConn(c)
		if next != nil {
			l.chained(next)
		}
		return
	}
	if next != nil {
		l.idle = append(l.idle, c) // start takes it (the last idle) at once
		l.chained(next)
		return
	}
	l.ready(c)
}

// chained starts the chain's next message on the loop, in the slot of the
// attempt that just ended.
func (l *loop) chained(dl *store.Delivery) {
	l.busy.Add(1)
	l.start(job{dl: dl})
}

// report notes p's result for the run loop and the recorder (handOver
// hands them over) and returns the chain's next message, if any.
func (l *loop) report(p *pending, res result) (next *store.Delivery) {
	l.d.sending.Add(-1)
	l.busy.Add(-1)
	ev, it, next := l.r.judged(p.j, res)
	if l.evs == nil {
		l.evs, l.recs = eventBatches.Get().(*[]event), recordBatches.Get().(*[]recItem)
	}
	*l.evs = append(*l.evs, ev)
	*l.recs = append(*l.recs, it)
	return next
}

// handOver hands the turn's results over: one event to the run loop, one
// batch to the recorder, in that order (judged says why), instead of two
// hand-overs and wake-ups a message.
func (l *loop) handOver() {
	if l.evs == nil {
		return
	}
	l.r.events <- event{batch: l.evs}
	l.r.recb <- l.recs
	l.evs, l.recs = nil, nil
}

// finish ends p's attempt, which got no answer, with res (an error).
func (l *loop) finish(p *pending, res result) {
	res.at = p.at
	res.dur = l.d.now().Sub(p.at)
	if next := l.report(p, res); next != nil {
		l.chained(next)
	}
}

// fail ends c's attempt with err and closes c.
func (l *loop) fail(c *lconn, err error) {
	p := c.p
	c.p = nil
	l.closeConn(c)
	if p == nil {
		return
	}
	if c.res.status != 0 { // the head was read: the answer is known (as readBody's error is ignored)
		res := c.res
		res.at, res.dur = p.at, l.d.now().Sub(p.at)
		if next := l.report(p, res); next != nil {
			l.chained(next)
		}
		return
	}
	l.finish(p, result{err: err})
}

// other hands c, with b (the bytes read of its answer), to a goroutine
// that reads the answer with fasthttp and closes the connection.
func (l *loop) other(c *lconn, b []byte) {
	p := c.p
	c.p = nil
	l.forget(c)
	got := bytes.Clone(b)
	d := l.d
	go func() {
		nc, err := netio.FileConn(c.fd) // c.fd is closed, nc has its own
		var res result
		fd := -1
		if err != nil {
			res = result{at: p.at, dur: d.now().Sub(p.at), err: err}
		} else {
			var reuse bool
			res, reuse = d.readOther(nc, got, p)
			if reuse {
				fd, err = netio.DetachFD(nc)
				if err != nil {
					fd = -1
				}
			} else {
				nc.Close()
			}
		}
		d.sending.Add(-1)
		l.busy.Add(-1)
		if next := l.r.attempted(p.j, res); next != nil {
			l.submit(job{dl: next})
		}
		if fd >= 0 {
			l.post(func() { l.adopt(fd) })
		} else {
			l.post(l.dialMore) // a connection fewer: an attempt waiting may dial
		}
	}()
}

// readOther reads the answer of p from nc, got being its bytes already
// read, with the fasthttp client the worker path uses (hostClient: the same
// limits, and errors that never quote the answer), given a transport that
// writes nothing and reads from nc (answerReader). reuse is true if the
// answer was read to its end, every read succeeded, nothing more came and
// neither side asked to close: nc may carry another request.
func (d *Drainer) readOther(nc net.Conn, got []byte, p *pending) (res result, reuse bool) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	if p.head {
		req.Header.SetMethod(fasthttp.MethodHead)
	}
	req.SetRequestURI("http://" + d.ep.addr + "/")
	resp.StreamBody = true
	nc.SetReadDeadline(p.deadline)
	ec := &readErrConn{Conn: nc}
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(got), ec))
	hc := d.hostClient(nil)
	hc.Transport = answerReader{br}
	err := hc.Do(req, resp)
	closing := resp.ConnectionClose()
	res = d.answered(resp, err, 0, p.at)
	reuse = res.err == nil && !res.tooLarge && !closing && !ec.failed && br.Buffered() == 0
	if reuse {
		nc.SetReadDeadline(time.Time{})
	}
	return res, reuse
}

// answerReader is a fasthttp transport that sends nothing (the loop has
// sent the request) and reads the answer from br as fasthttp's own
// transport reads it.
type answerReader struct{ br *bufio.Reader }

func (a answerReader) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (bool, error) {
	if req.Header.IsHead() {
		resp.SkipBody = true
	}
	if hc.DisableHeaderNamesNormalizing {
		resp.Header.DisableNormalizing()
	}
	err := resp.ReadLimitBody(a.br, hc.MaxResponseBodySize)
	if x, ok := err.(interface{ Timeout() bool }); ok && x.Timeout() {
		err = fasthttp.ErrTimeout // as fasthttp's transport reports any timeout
	}
	return false, err
}

// readErrConn notes whether any read of its connection failed (or met its
// end).
type readErrConn struct {
	net.Conn
	failed bool
}

func (c *readErrConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.failed = true
	}
	return n, err
}

// closeConn closes c.
func (l *loop) closeConn(c *lconn) {
	l.forget(c)
	unix.Close(c.fd)
	l.dialMore()
}

// forget takes c off the loop (without closing its descriptor).
func (l *loop) forget(c *lconn) {
	delete(l.conns, c.fd)
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	for i, x := range l.idle {
		if x == c {
			l.idle = append(l.idle[:i], l.idle[i+1:]...)
			break
		}
	}
}

// arm makes the loop look at the deadlines by t.
func (l *loop) arm(t time.Time) {
	if l.nextDue.IsZero() || t.Before(l.nextDue) {
		l.nextDue = t
	}
}

// scan fails the attempts past their deadline (closing their connection:
// the target sees the client leave), closes connections idle too long and
// finds the next deadline.
func (l *loop) scan(now time.Time) {
	l.nextDue = time.Time{}
	for _, c := range l.conns {
		switch {
		case c.p != nil && !now.Before(c.p.deadline):
			l.fail(c, fasthttp.ErrTimeout)
		case c.p != nil:
			l.arm(c.p.deadline)
		case now.Sub(c.idleFrom) >= idleTimeout:
			l.closeConn(c)
		}
	}
	for len(l.waiting) > 0 && !now.Before(l.waiting[0].deadline) {
		p := l.waiting[0]
		l.waiting = l.waiting[1:]
		l.finish(p, result{err: fasthttp.ErrTimeout})
	}
	for _, p := range l.waiting {
		l.arm(p.deadline)
	}
}

// connsPerLoop is how many of a target's connections one delivery loop
// serves at most: a target of Concurrency c has ceil(c/connsPerLoop) loops,
// at most one per CPU sluice may use (GOMAXPROCS). One loop does a turn's
// reads and writes one after the other, and the target waits meanwhile:
// two loops for 64 connections drained 40.4-40.9k msgs/s against
// 36.5-36.8k with one, at a little less CPU a message (100k 1 KiB messages
// to bench/noop, 2 CPUs, alternating).
const connsPerLoop = 32

// startLoops starts the run's delivery loops, each with its share of the
// target's connections.
func (r *runner) startLoops() error {
	conc := r.d.target.Concurrency
	k := min(max(1, runtime.GOMAXPROCS(0)), (conc+connsPerLoop-1)/connsPerLoop)
	for i := range k {
		share := conc / k
		if i < conc%k {
			share++
		}
		l, err := newLoop(r, share)
		if err != nil {
			for _, l := range r.lps {
				l.close()
			}
			r.lps = nil
			return err
		}
		r.lps = append(r.lps, l)
	}
	return nil
}

// pickLoop returns the loop with the fewest attempts under way.
func (r *runner) pickLoop() *loop {
	best := r.lps[0]
	for _, l := range r.lps[1:] {
		if l.busy.Load() < best.busy.Load() {
			best = l
		}
	}
	return best
}
