//go:build linux

package netio

import (
	"errors"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// RawRead and RawWrite are read(2) and write(2) of a non-blocking socket
// without the scheduler's system call bookkeeping (see rawIO): for the
// proxy's event loops, whose sockets never block. On an error n is not
// meaningful; 0 and no error from RawRead is the end of the stream.
func RawRead(fd int, p []byte) (n int, errno syscall.Errno) { return sysRead(uintptr(fd), p) }

// RawWrite: see RawRead.
func RawWrite(fd int, p []byte) (n int, errno syscall.Errno) { return sysWrite(uintptr(fd), p) }

// DetachFD takes a dialed TCP connection's socket off Go's poller for an
// event loop of its own: it returns a duplicate of its descriptor
// (non-blocking, close-on-exec, like the original) and closes nc.
func DetachFD(nc net.Conn) (int, error) {
	defer nc.Close()
	sc, ok := nc.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return -1, errors.New("netio: not a TCP connection")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) {
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return -1, cerr
	}
	return nfd, err
}

// FileConn gives an event loop's socket fd back to Go's poller, as a
// net.Conn; fd is the connection's from then on (closed with it, or here
// on an error).
func FileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	defer f.Close() // net.FileConn made a duplicate
	return net.FileConn(f)
}
