// Command noop is the reference server of bench/ingest.sh: a fasthttp server
// that stores nothing and answers every request 202 with a body shaped like
// sluice's. Durable ingest is quoted as a ratio of its throughput.
//
// With -commit-wait D it models a group commit that does no work: every
// request is handed to one batcher goroutine, which takes everything queued,
// waits D (the commit's wall time: writes and fsyncs) and releases the batch.
// bench/ceiling.sh uses it to show what a given commit cycle costs in
// throughput under the same closed-loop load, whatever the storage does.
//
// GET /_count answers how many requests it has answered (bench/drain.sh
// counts deliveries with it).
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:18080", "address")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here until SIGINT/SIGTERM")
	commitWait := flag.Duration("commit-wait", -1, "hand every request to a batcher that waits this long per batch (0: hand-off only; negative: none)")
	logPath := flag.String("log", "", "hand every request's body to a batcher that appends each batch to this file with one write and one fdatasync")
	logWriters := flag.Int("log-writers", 1, "batchers appending to the -log file side by side (each commits its own batch)")
	logZero := flag.Int64("log-zeroed", 0, "write this many zero bytes to the -log file (and fsync) before serving, so batches overwrite allocated blocks")
	// The same timeouts as sluice's defaults (policies.Default*Timeout): with
	// them fasthttp arms a read and a write deadline on every request, as it
	// does in sluice. 0 sets none.
	readTimeout := flag.Duration("read-timeout", 30*time.Second, "fasthttp.Server.ReadTimeout (0: none)")
	writeTimeout := flag.Duration("write-timeout", 30*time.Second, "fasthttp.Server.WriteTimeout (0: none)")
	idleTimeout := flag.Duration("idle-timeout", 2*time.Minute, "fasthttp.Server.IdleTimeout (0: none)")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sig
			pprof.StopCPUProfile()
			f.Close()
			os.Exit(0)
		}()
	}
	var n atomic.Uint64
	wait := func() {}
	if *commitWait >= 0 {
		wait = batcher(*commitWait)
	}
	var logTo func([]byte)
	if *logPath != "" {
		logTo = logger(*logPath, *logZero, *logWriters)
	}
	h := func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/_count" {
			// For bench/drain.sh: how many requests this server answered.
			ctx.SetBodyString(strconv.FormatUint(n.Load(), 10))
			return
		}
		if logTo != nil {
			logTo(ctx.PostBody())
		} else {
			wait()
		}
		id := strconv.FormatUint(n.Add(1), 10)
		ctx.Response.Header.Set("Location", "/_sluice/v1/messages/"+id)
		ctx.Response.Header.Set("X-Sluice-Id", id)
		ctx.SetContentType("application/json")
		ctx.SetStatusCode(fasthttp.StatusAccepted)
		ctx.SetBodyString(`{"id":"` + id + `","status":"queued","status_url":"/_sluice/v1/messages/` + id + `"}` + "\n")
	}
	s := &fasthttp.Server{Handler: h, Name: "noop", MaxRequestBodySize: 1 << 20,
		ReadTimeout: *readTimeout, WriteTimeout: *writeTimeout, IdleTimeout: *idleTimeout}
	log.Fatal(s.ListenAndServe(*addr))
}

// gather adds to batch whatever is already waiting in reqs, up to its
// capacity, after yielding once as sluice's writer does to let the other
// senders in.
func gather[T any](reqs chan T, batch []T) []T {
	runtime.Gosched()
	for len(batch) < cap(batch) {
		select {
		case r := <-reqs:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// batcher starts the model of a group commit and returns the function a
// handler calls to join the next batch and wait for it.
func batcher(d time.Duration) func() {
	reqs := make(chan chan struct{}, 4096)
	go func() {
		batch := make([]chan struct{}, 0, 4096)
		for r := range reqs {
			batch = gather(reqs, append(batch[:0], r))
			if d > 0 {
				time.Sleep(d)
			}
			for _, r := range batch {
				r <- struct{}{}
			}
		}
	}()
	return func() {
		done := make(chan struct{}, 1)
		reqs <- done
		<-done
	}
}

// logger starts the smallest durable group commit: one goroutine takes every
// queued body, appends the batch to path with one write, fdatasyncs, and
// releases the batch. It is the floor of what any durable store must do.
func logger(path string, zeroed int64, writers int) func([]byte) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	if zeroed > 0 {
		z := make([]byte, 1<<20)
		for n := int64(0); n < zeroed; n += int64(len(z)) {
			if _, err := f.Write(z); err != nil {
				log.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			log.Fatal(err)
		}
	}
	type req struct {
		body []byte
		done chan struct{}
	}
	reqs := make(chan req, 4096)
	var end atomic.Int64
	for range writers {
		go func() {
			batch := make([]req, 0, 4096)
			var buf []byte
			for r := range reqs {
				batch = gather(reqs, append(batch[:0], r))
				buf = buf[:0]
				for _, r := range batch {
					buf = append(buf, r.body...)
				}
				if _, err := f.WriteAt(buf, end.Add(int64(len(buf)))-int64(len(buf))); err != nil {
					log.Fatal(err)
				}
				if err := fdatasync(f); err != nil {
					log.Fatal(err)
				}
				for _, r := range batch {
					r.done <- struct{}{}
				}
			}
		}()
	}
	return func(body []byte) {
		done := make(chan struct{}, 1)
		reqs <- req{append([]byte(nil), body...), done}
		<-done
	}
}
