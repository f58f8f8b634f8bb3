//go:build linux

package netio

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EpollWaiter waits for an epoll set's events through Go's poller: the set
// is itself a descriptor, readable when it has events, so the goroutine
// that waits parks in the runtime like any other instead of blocking a
// thread in epoll_wait(2). A thread blocked there keeps its processor
// until the runtime's monitor takes it back (20 µs to 10 ms later), and
// with a loop per CPU the rest of the process (a store's writer back from
// its fdatasync, the drainers) waited that long for a CPU. With events
// waiting, Wait returns them with one epoll_wait and does not park.
type EpollWaiter struct {
	ep    int
	f     *os.File
	rc    syscall.RawConn
	until time.Time // the read deadline last set
}

// NewEpollWaiter takes the epoll set ep (made non-blocking; Close closes
// it). It takes ep even when it fails: ep is closed then.
func NewEpollWaiter(ep int) (*EpollWaiter, error) {
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		return nil, err
	}
	f := os.NewFile(uintptr(ep), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &EpollWaiter{ep: ep, f: f, rc: rc}, nil
}

// Wait returns the events of the set into evs, waiting for one until
// until (zero: no limit); none once until has passed.
func (w *EpollWaiter) Wait(evs []unix.EpollEvent, until time.Time) (n int, err error) {
	poll := func(fd uintptr) bool {
		for {
			n, err = unix.EpollWait(int(fd), evs, 0)
			if err != unix.EINTR {
				return n > 0 || err != nil
			}
		}
	}
	if poll(uintptr(w.ep)); n > 0 || err != nil {
		return n, err
	}
	if !until.Equal(w.until) { // a timer update only when it changes
		if err := w.f.SetReadDeadline(until); err != nil {
			return 0, err
		}
		w.until = until
	}
	if rerr := w.rc.Read(poll); rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, rerr
	}
	return n, err
}

// Close closes the epoll set.
func (w *EpollWaiter) Close() error { return w.f.Close() }

// NewEpoll returns a new epoll set (close-on-exec) and, in it, an eventfd
// (non-blocking) another goroutine writes to wake the loop that waits on
// the set: what every event loop starts with.
func NewEpoll() (ep, wake int, err error) {
	if ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return -1, -1, err
	}
	if wake, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		unix.Close(ep)
		return -1, -1, err
	}
	if err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return -1, -1, err
	}
	return ep, wake, nil
}
