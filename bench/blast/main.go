// Command blast is the plain fasthttp client of bench/drain.sh: the
// reference a drainer's delivery rate is a ratio of, and the filler of a
// backlog. It sends -n POSTs of -size bytes to -url from -c workers over
// one fasthttp.HostClient with -c connections (its best configuration: a
// keep-alive pool as large as the workers, no rate limit), and prints
// "sent N in S s: R req/s, C cpu_us/req, E errors" (CPU: this process's
// user + system time per request).
//
// With -watch it sends nothing: it polls URL (bench/noop's /_count) until
// the count reaches -n and prints the rate between the first count above
// -from and the last: "counted N in S s: R req/s".
//
// With -epoll it sends from one epoll loop instead of the fasthttp client
// (epoll_linux.go): what a delivery client on an event loop would cost.
//
// With -netio its connections are wrapped as sluice's drainers wrap theirs
// (internal/netio: lazy deadlines, raw I/O on Linux): the same client
// code with sluice's connection layer, to tell that layer's share from the
// rest of the drainer's.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/internal/netio"
	"github.com/valyala/fasthttp"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:18082/api/orders", "where to send")
	n := flag.Int("n", 60000, "requests to send (or, with -watch, the count to wait for)")
	conc := flag.Int("c", 64, "workers and connections")
	size := flag.Int("size", 1024, "body bytes")
	watch := flag.Bool("watch", false, "poll url (a count) instead of sending")
	from := flag.Int("from", 0, "with -watch: the count before the run")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	useNetio := flag.Bool("netio", false, "wrap connections as sluice's drainers do (internal/netio)")
	useEpoll := flag.Bool("epoll", false, "send from one epoll loop instead (epoll_linux.go): what a client on an event loop costs")
	flag.Parse()
	if *watch {
		watchCount(*url, *from, *n, *timeout)
		return
	}
	req := fasthttp.URI{}
	if err := req.Parse(nil, []byte(*url)); err != nil {
		log.Fatal(err)
	}
	hc := &fasthttp.HostClient{Addr: string(req.Host()), MaxConns: *conc, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	if *useNetio {
		hc.DialTimeout = func(addr string, timeout time.Duration) (net.Conn, error) {
			if timeout <= 0 { // Do, with no deadline: fasthttp's own default
				timeout = fasthttp.DefaultDialTimeout
			}
			c, err := fasthttp.DialTimeout(addr, timeout)
			if err != nil {
				return nil, err
			}
			return netio.NewConn(c), nil
		}
	}
	body := make([]byte, *size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	if *useEpoll {
		cpu0, start := cpuTime(), time.Now()
		sent, errs := epollBlast(string(req.Host()), *n, *conc, rawPost(string(req.Host()), string(req.RequestURI()), body))
		el, cpu := time.Since(start), cpuTime()-cpu0
		fmt.Printf("sent %d in %.3f s: %.0f req/s, %.1f cpu_us/req, %d errors\n", sent, el.Seconds(), float64(sent)/el.Seconds(),
			float64(cpu.Microseconds())/float64(max(sent, 1)), errs)
		return
	}
	var next, errs atomic.Int64
	cpu0 := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	for range *conc {
		wg.Go(func() {
			rq, rs := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(rq)
			defer fasthttp.ReleaseResponse(rs)
			for next.Add(1) <= int64(*n) && time.Since(start) < *timeout {
				rq.SetRequestURI(*url)
				rq.Header.SetMethod("POST")
				rq.Header.SetContentType("application/json")
				rq.SetBody(body)
				if err := hc.Do(rq, rs); err != nil || rs.StatusCode() >= 300 {
					if errs.Add(1) == 1 {
						log.Printf("first error: %v (status %d)", err, rs.StatusCode())
					}
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	fmt.Printf("sent %d in %.3f s: %.0f req/s, %.1f cpu_us/req, %d errors\n", *n, el.Seconds(), float64(*n)/el.Seconds(),
		float64(cpu.Microseconds())/float64(*n), errs.Load())
}

func watchCount(url string, from, target int, timeout time.Duration) {
	get := func() int {
		code, body, err := fasthttp.GetTimeout(nil, url, time.Second)
		if err != nil || code != 200 {
			return -1
		}
		v, _ := strconv.Atoi(string(body))
		return v
	}
	deadline := time.Now().Add(timeout)
	var t0 time.Time
	c0 := 0
	for time.Now().Before(deadline) {
		c := get()
		if c > from && t0.IsZero() {
			t0, c0 = time.Now(), c
		}
		if c >= target {
			el := time.Since(t0)
			fmt.Printf("counted %d in %.3f s: %.0f req/s\n", c-c0, el.Seconds(), float64(c-c0)/el.Seconds())
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "blast: the count did not reach %d in %s\n", target, timeout)
	os.Exit(1)
}
