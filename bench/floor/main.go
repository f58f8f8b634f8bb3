//go:build linux

// Command floor is the smallest durable HTTP server this machine can run:
// the floor of the ingest issue ("one goroutine, one write + one fdatasync
// per batch of bodies, nothing else"), built literally. One goroutine,
// locked to its thread, runs an epoll loop over non-blocking sockets: it
// reads whatever requests have arrived on every ready connection, appends
// their bodies to one buffer, writes it to the log file with one write(2)
// and one fdatasync(2), and only then answers each of those requests 202.
// No goroutine per connection, no hand-off, no framing, no index, no
// checksum. It speaks just enough HTTP/1.1 for wrk and bench/blast:
// requests with Content-Length (no chunked bodies), keep-alive.
//
// bench/noop -log is the other floor: fasthttp (a goroutine per
// connection) handing each body to one batcher goroutine. The difference
// between the two is what Go's per-connection goroutines and the hand-off
// cost, which sluice pays too.
//
//	floor -listen 127.0.0.1:18080 -log /tmp/floor.log
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

var accepted = []byte("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

type conn struct {
	fd      int
	in      []byte // bytes read, not yet a whole request
	replies int    // requests whose bodies are in the batch
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "address to listen on")
	path := flag.String("log", "floor.log", "file the bodies are appended to")
	flag.Parse()
	runtime.LockOSThread()
	logf, err := os.OpenFile(*path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	lfd, err := listenFD(*listen)
	if err != nil {
		log.Fatal(err)
	}
	ep, err := unix.EpollCreate1(0)
	if err != nil {
		log.Fatal(err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		log.Fatal(err)
	}
	conns := map[int]*conn{}
	events := make([]unix.EpollEvent, 512)
	buf := make([]byte, 64<<10)
	var batch []byte
	var waiting []*conn
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
					if err != nil {
						break
					}
					unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
					conns[cfd] = &conn{fd: cfd}
					unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(cfd)})
				}
				continue
			}
			c := conns[fd]
			if c == nil {
				continue
			}
			closed := false
			for {
				m, err := unix.Read(fd, buf)
				if m > 0 {
					c.in = append(c.in, buf[:m]...)
				}
				if err == unix.EAGAIN {
					break
				}
				if m <= 0 || err != nil {
					closed = true
					break
				}
				if m < len(buf) {
					break
				}
			}
			before := c.replies
			var bad bool
			batch, bad = takeRequests(c, batch)
			if c.replies > before && before == 0 {
				waiting = append(waiting, c)
			}
			if (closed || bad) && c.replies == 0 {
				unix.Close(fd)
				delete(conns, fd)
			}
		}
		if len(waiting) == 0 {
			continue
		}
		if _, err := logf.Write(batch); err != nil {
			log.Fatal(err)
		}
		if err := unix.Fdatasync(int(logf.Fd())); err != nil {
			log.Fatal(err)
		}
		batch = batch[:0]
		for _, c := range waiting {
			out := bytes.Repeat(accepted, c.replies)
			c.replies = 0
			for len(out) > 0 {
				m, err := unix.Write(c.fd, out)
				if err == unix.EAGAIN {
					// The client is not reading its answers: wait for
					// room, at most a second, then drop it.
					fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLOUT}}
					if n, _ := unix.Poll(fds, 1000); n == 1 {
						continue
					}
					unix.Close(c.fd)
					delete(conns, c.fd)
					break
				}
				if err != nil {
					break
				}
				out = out[m:]
			}
		}
		waiting = waiting[:0]
	}
}

// takeRequests moves every whole request at the front of c.in into batch
// (its body) and counts it in c.replies. bad: a request it cannot read
// (no Content-Length on a request with a body, or over 1 MiB).
func takeRequests(c *conn, batch []byte) ([]byte, bool) {
	for {
		end := bytes.Index(c.in, []byte("\r\n\r\n"))
		if end < 0 {
			return batch, len(c.in) > 1<<20
		}
		n := 0
		for _, line := range bytes.Split(c.in[:end], []byte("\r\n"))[1:] {
			name, value, ok := bytes.Cut(line, []byte(":"))
			if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Length")) {
				v, err := strconv.Atoi(string(bytes.TrimSpace(value)))
				if err != nil || v < 0 || v > 1<<20 {
					return batch, true
				}
				n = v
			}
		}
		if len(c.in) < end+4+n {
			return batch, false
		}
		batch = append(batch, c.in[end+4:end+4+n]...)
		c.replies++
		c.in = c.in[end+4+n:]
	}
}

func listenFD(addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return -1, fmt.Errorf("-listen %q: want an IPv4 host:port", addr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return -1, err
	}
	return fd, unix.Listen(fd, 1024)
}
