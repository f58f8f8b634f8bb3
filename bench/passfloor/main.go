// Command passfloor is what bench/passthrough.sh measures sluice's passthrough
// against besides nginx: the cost of the model sluice is built on, with
// nothing of sluice in it.
//
//   - -kind relay: a goroutine per client connection with its own upstream
//     connection; each request is one read from the client, one write
//     upstream, one read of the answer and one write back. No HTTP is
//     parsed: it is only right for a load whose requests and answers each
//     arrive in one read (bench/passthrough.sh's 1 KiB POSTs and bench/noop's
//     answers). It is the floor of Go's goroutine-per-connection model on
//     the machine: the same system calls as any Go proxy, nothing else.
//   - -kind epoll (and epoll2: two loops): the relay on event loops of its
//     own (level-triggered epoll, one thread each, see epoll_linux.go)
//     instead of Go's poller: the floor of the model sluice's event loops
//     (server.event_loops) are built on. Linux only.
//   - -kind fasthttp: a fasthttp.Server whose handler hands the request to a
//     fasthttp.HostClient, both with sluice's default timeouts: the floor of
//     the two libraries sluice's passthrough uses.
package main

import (
	"flag"
	"log"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18084", "address")
	upstream := flag.String("upstream", "127.0.0.1:18080", "upstream address")
	kind := flag.String("kind", "relay", "relay, epoll (-loops), epoll2 or fasthttp")
	loops := flag.Int("loops", 1, "event loops of -kind epoll")
	flag.Parse()
	switch *kind {
	case "relay":
		relay(*listen, *upstream)
	case "epoll":
		epollRelay(*listen, *upstream, *loops)
	case "epoll2":
		epollRelay(*listen, *upstream, 2)
	case "fasthttp":
		hc := &fasthttp.HostClient{Addr: *upstream, MaxConns: 1024, ReadTimeout: 60 * time.Second, WriteTimeout: 60 * time.Second}
		srv := &fasthttp.Server{
			Handler: func(ctx *fasthttp.RequestCtx) {
				if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
					ctx.Error("upstream failed", fasthttp.StatusBadGateway)
				}
			},
			ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		}
		log.Fatal(srv.ListenAndServe(*listen))
	default:
		log.Fatalf("-kind %q: want relay, epoll, epoll2 or fasthttp", *kind)
	}
}

func relay(listen, upstream string) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			b := make([]byte, 16<<10)
			for {
				n, err := c.Read(b)
				if err != nil {
					return
				}
				if _, err := u.Write(b[:n]); err != nil {
					return
				}
				if n, err = u.Read(b); err != nil {
					return
				}
				if _, err := c.Write(b[:n]); err != nil {
					return
				}
			}
		}()
	}
}
