// Command noop is the reference server of bench/ingest.sh: a fasthttp server
// that stores nothing and answers every request 202 with a body shaped like
// sluice's. Durable ingest is quoted as a ratio of its throughput.
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:18080", "address")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here until SIGINT/SIGTERM")
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
	h := func(ctx *fasthttp.RequestCtx) {
		id := strconv.FormatUint(n.Add(1), 10)
		ctx.Response.Header.Set("Location", "/_sluice/v1/messages/"+id)
		ctx.Response.Header.Set("X-Sluice-Id", id)
		ctx.SetContentType("application/json")
		ctx.SetStatusCode(fasthttp.StatusAccepted)
		ctx.SetBodyString(`{"id":"` + id + `","status":"queued","status_url":"/_sluice/v1/messages/` + id + `"}` + "\n")
	}
	s := &fasthttp.Server{Handler: h, Name: "noop", MaxRequestBodySize: 1 << 20}
	log.Fatal(s.ListenAndServe(*addr))
}
