//go:build linux

package main

import (
	"bytes"
	"fmt"
	"log"
	"net"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// epollBlast sends n requests (raw bytes: req) over conc connections to
// addr from one thread with a level-triggered epoll set, one request in
// flight on each connection; an answer is taken to be one read that
// begins "HTTP/1.1 2" (right for bench/noop's small answers, as
// passfloor's relay is for its load). What a delivery client built on an
// event loop would cost, beside the fasthttp client above.
func epollBlast(addr string, n, conc int, req []byte) (sent, errs int) {
	runtime.LockOSThread()
	ep, err := unix.EpollCreate1(0)
	if err != nil {
		log.Fatal(err)
	}
	fds := make([]int, 0, conc)
	for range conc {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		rc, _ := c.(*net.TCPConn).SyscallConn()
		var fd int
		rc.Control(func(f uintptr) { fd, _ = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
		c.Close()
		unix.SetNonblock(fd, true)
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			log.Fatal(err)
		}
		fds = append(fds, fd)
	}
	started, done := 0, 0
	for _, fd := range fds {
		if started < n {
			unix.Write(fd, req)
			started++
		}
	}
	evs := make([]unix.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	ok := []byte("HTTP/1.1 2")
	deadline := time.Now().Add(5 * time.Minute)
	for done < started && time.Now().Before(deadline) {
		k, err := unix.EpollWait(ep, evs, 1000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, ev := range evs[:k] {
			fd := int(ev.Fd)
			m, err := unix.Read(fd, buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if m <= 0 {
				log.Fatalf("connection closed after %d answers", done)
			}
			done++
			if !bytes.HasPrefix(buf[:m], ok) {
				errs++
			}
			if started < n {
				unix.Write(fd, req)
				started++
			}
		}
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	unix.Close(ep)
	return done, errs
}

// rawPost is the request epollBlast sends: what the fasthttp client sends.
func rawPost(host, path string, body []byte) []byte {
	return append(fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, host, len(body)), body...)
}
