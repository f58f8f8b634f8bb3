//go:build linux

package netio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// rawIO reads and writes a TCP connection's socket with raw system calls,
// through the connection's poller (syscall.RawConn): a read that finds no
// data waits for the socket as net.Conn's Read does, under the same
// deadlines and locks, and Close ends it the same way.
//
// net.Conn's Read and Write tell the scheduler that the thread enters a
// system call (entersyscall/exitsyscall), so that the thread's processor can
// run other goroutines if the call blocks. A read or write of a non-blocking
// socket never blocks, but under load one takes long enough (tens of µs on a
// shared virtual machine) that the runtime's monitor thread finds the
// processor still in the call, hands it to another thread and keeps waking
// every 20 µs to check again: on the passthrough path that was ~43% of the
// proxy's context switches and the thread hand-offs behind them. The cost:
// a call holds its processor until it returns, which for a non-blocking
// socket is at most the copy of one socket buffer's worth of bytes.
type rawIO struct {
	rc           syscall.RawConn
	laddr, raddr net.Addr
	rd, wr       rawOp // a read and a write may run at once
}

// rawOp is one direction's call in progress.
type rawOp struct {
	mu sync.Mutex // one call at a time: its fields are the call's
	p  []byte     // the caller's buffer
	n  int
	e  syscall.Errno
	fn func(fd uintptr) bool // the op's read or write, bound once
}

// newRawIO returns the raw reader and writer of c, or nil if c is not a TCP
// connection.
func newRawIO(c net.Conn) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{rc: rc, laddr: tc.LocalAddr(), raddr: tc.RemoteAddr()}
	r.rd.fn, r.wr.fn = r.rd.read, r.wr.write
	return r
}

func (o *rawOp) read(fd uintptr) bool {
	for {
		n, e := sysRead(fd, o.p)
		switch e {
		case 0:
			o.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for data
		}
		o.e = e
		return true
	}
}

func (o *rawOp) write(fd uintptr) bool {
	for o.n < len(o.p) {
		rest := o.p[o.n:]
		n, e := sysWrite(fd, rest)
		switch e {
		case 0:
			o.n += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // wait for room
		default:
			o.e = e
			return true
		}
	}
	return true
}

// Read is net.Conn's Read: io.EOF at the end of the stream.
func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &r.rd
	o.mu.Lock()
	o.p, o.n, o.e = p, 0, 0
	err := r.rc.Read(o.fn)
	n, e := o.n, o.e
	o.p = nil
	o.mu.Unlock()
	switch {
	case err != nil || e != 0:
		return 0, r.opError("read", err, e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write is net.Conn's Write: all of p, or the bytes written and an error.
func (r *rawIO) Write(p []byte) (int, error) {
	o := &r.wr
	o.mu.Lock()
	o.p, o.n, o.e = p, 0, 0
	err := r.rc.Write(o.fn)
	n, e := o.n, o.e
	o.p = nil
	o.mu.Unlock()
	if err != nil || e != 0 {
		return n, r.opError("write", err, e)
	}
	return n, nil
}

// opError is the error net.Conn's Read or Write (op) returns for the same
// failure: a *net.OpError with both addresses around the poller's error
// (err: a deadline, os.ErrDeadlineExceeded; a closed connection,
// net.ErrClosed), which the RawConn gave as its own raw-read or raw-write
// *net.OpError, or around the system call's errno (e), an *os.SyscallError.
func (r *rawIO) opError(op string, err error, e syscall.Errno) error {
	var inner error = os.NewSyscallError(op, e)
	if err != nil {
		inner = err
		if oe, ok := err.(*net.OpError); ok {
			inner = oe.Err
		}
	}
	return &net.OpError{Op: op, Net: "tcp", Source: r.laddr, Addr: r.raddr, Err: inner}
}
