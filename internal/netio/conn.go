// Package netio makes a TCP connection cheaper to serve at a high rate of
// small requests, for the proxy's listener and upstream pools and the
// drainers' clients: Conn arms read and write deadlines only when they
// must be (fasthttp sets them on every request), and on Linux reads and
// writes the socket with raw system calls through its poller (rawIO).
//
// Guarantees: a Conn behaves as the net.Conn it wraps, to its callers:
// every read and write times out at the deadline last asked for, blocks
// and is woken as before, fails with the same errors, and Close ends it. What it saves is runtime
// work: timer updates (2-4% of a passthrough request's CPU) and the
// scheduler's system call hand-offs under load (~43% of the proxy's
// context switches). Its cost: a read or write holds its processor until
// the system call returns (a non-blocking socket's: never long), and one
// extra wake-up per timeout on a busy keep-alive connection.
package netio

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// lazyDeadlines arms a connection's read and write deadlines only when they
// must be: fasthttp sets them on every request (the server a read deadline
// for the idle wait, another once the request starts and a write deadline
// for the answer; the upstream pool a write and a read deadline), and each
// set is a runtime timer update under the poller's locks, ~2-4% of a
// passthrough request's CPU.
//
// A deadline asked for that is no earlier than the one armed is only noted:
// the armed one fires first, and then the operation that timed out finds the
// deadline asked for still ahead, arms it and carries on (afterTimeout). A
// deadline earlier than the one armed is armed at once. So every read and
// write times out exactly at the deadline last asked for, as with the
// connection's own methods; the cost is one extra wake-up when the earlier
// deadline passes, about once per timeout on a busy keep-alive connection
// (on one that keeps receiving requests, the deadline asked for moves later
// each time and the one armed stays put).
type lazyDeadlines struct {
	mu   sync.Mutex
	r, w lazyDeadline
}

type lazyDeadline struct {
	want  time.Time // the deadline asked for; zero: none
	armed time.Time // the deadline the connection has; zero: none
}

// before reports whether deadline a comes before b (zero is never).
func before(a, b time.Time) bool {
	return !a.IsZero() && (b.IsZero() || a.Before(b))
}

// set asks for deadline t on d, arming it through arm if it is earlier than
// the one armed.
func (l *lazyDeadlines) set(d *lazyDeadline, t time.Time, arm func(time.Time) error) error {
	l.mu.Lock()
	d.want = t
	var err error
	if before(t, d.armed) {
		if err = arm(t); err == nil {
			d.armed = t
		}
	}
	l.mu.Unlock()
	return err
}

// afterTimeout is called when an operation failed with err: it reports
// whether err is a deadline that passed before the one asked for, in which
// case that one is now armed and the operation is to be tried again.
func (l *lazyDeadlines) afterTimeout(d *lazyDeadline, err error, arm func(time.Time) error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !d.want.IsZero() && !time.Now().Before(d.want) {
		return false // the deadline asked for has passed
	}
	if arm(d.want) != nil {
		return false
	}
	d.armed = d.want
	return true
}

// Conn is a net.Conn whose deadlines are armed lazily (lazyDeadlines)
// and which, on Linux, reads and writes a TCP socket with raw system calls
// (rawIO).
type Conn struct {
	net.Conn
	dl  lazyDeadlines
	raw *rawIO // nil: the Conn's own Read and Write
}

// NewConn wraps c: its deadlines are armed lazily from then on (set them
// through the Conn only), and if c is a *net.TCPConn on Linux, reads and
// writes go to its socket with raw system calls, failing with the errors
// c's own would (a *net.OpError with c's addresses: a timeout is
// os.ErrDeadlineExceeded, a closed connection net.ErrClosed, a reset an
// *os.SyscallError). Any other c is read and written through its methods.
func NewConn(c net.Conn) *Conn {
	return &Conn{Conn: c, raw: newRawIO(c)}
}

func (c *Conn) read(p []byte) (int, error) {
	if c.raw != nil {
		return c.raw.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *Conn) write(p []byte) (int, error) {
	if c.raw != nil {
		return c.raw.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.dl.set(&c.dl.r, t, c.Conn.SetReadDeadline)
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.dl.set(&c.dl.w, t, c.Conn.SetWriteDeadline)
}

func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *Conn) Read(p []byte) (int, error) {
	for {
		n, err := c.read(p)
		if n > 0 || err == nil || !c.dl.afterTimeout(&c.dl.r, err, c.Conn.SetReadDeadline) {
			return n, err
		}
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	written := 0
	for {
		n, err := c.write(p[written:])
		written += n
		if err == nil || !c.dl.afterTimeout(&c.dl.w, err, c.Conn.SetWriteDeadline) {
			return written, err
		}
	}
}
