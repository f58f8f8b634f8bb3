package main

import (
	"log"
	"net/netip"
	"runtime"

	"golang.org/x/sys/unix"
)

// epollRelay is the relay of -kind relay on event loops of its own instead
// of Go's netpoller: loops threads, each with a level-triggered epoll set;
// a readable socket is read once (no read that finds nothing) and what was
// read is written to its peer. Same load limits as relay.
func epollRelay(listen, upstream string, loops int) {
	la := netip.MustParseAddrPort(listen)
	ua := netip.MustParseAddrPort(upstream)
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		log.Fatal(err)
	}
	_ = unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: int(la.Port()), Addr: la.Addr().As4()}); err != nil {
		log.Fatal(err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		log.Fatal(err)
	}
	eps := make([]int, loops)
	peers := make([][]int32, loops)
	for i := range eps {
		if eps[i], err = unix.EpollCreate1(0); err != nil {
			log.Fatal(err)
		}
		peers[i] = make([]int32, 1<<16)
		go loop(eps[i], peers[i])
	}
	for i := 0; ; i++ {
		c, _, err := unix.Accept(lfd)
		if err != nil {
			continue
		}
		u, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			unix.Close(c)
			continue
		}
		if err := unix.Connect(u, &unix.SockaddrInet4{Port: int(ua.Port()), Addr: ua.Addr().As4()}); err != nil {
			unix.Close(c)
			unix.Close(u)
			continue
		}
		_ = unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetsockoptInt(u, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetNonblock(c, true)
		_ = unix.SetNonblock(u, true)
		k := i % loops
		peers[k][c], peers[k][u] = int32(u), int32(c)
		for _, fd := range []int{c, u} {
			unix.EpollCtl(eps[k], unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
		}
	}
}

func loop(ep int, peer []int32) {
	runtime.LockOSThread()
	evs := make([]unix.EpollEvent, 256)
	b := make([]byte, 16<<10)
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, ev := range evs[:n] {
			fd := int(ev.Fd)
			p := int(peer[fd])
			if p < 0 {
				continue // closed earlier in this batch
			}
			m, err := unix.Read(fd, b)
			if err == unix.EAGAIN {
				continue
			}
			if m <= 0 {
				peer[fd], peer[p] = -1, -1
				unix.Close(fd)
				unix.Close(p)
				continue
			}
			for w := 0; w < m; {
				k, err := unix.Write(p, b[w:m])
				if err == unix.EAGAIN {
					continue
				}
				if err != nil {
					break
				}
				w += k
			}
		}
	}
}
