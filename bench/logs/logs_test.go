// Package logs measures log ingest and delivery (bench/logs.sh runs it):
//
//   - BenchmarkIngest: Elasticsearch _bulk bodies of 500 documents of ~200
//     bytes, posted by concurrent clients, fsync always. The same bodies go
//     to a route with protocol elasticsearch (split: one message per
//     document) and to a route with protocol http (stored whole, one message
//     per body), alternating in the same run. It reports documents
//     acknowledged per second for each and their ratio, split/whole.
//   - BenchmarkDeliver: documents delivered per second by an
//     elasticsearch-bulk target to a mock store that parses each _bulk
//     request and answers a full bulk reply, which the drainer reads.
//
// Not run in CI (the names start with Benchmark).
package logs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/drain"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/proxy"
)

const (
	docsPerBody = 500
	docBytes    = 200
)

func env(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		b.Fatalf("%s=%q: want a positive whole number", name, s)
	}
	return v
}

// bulkBody is one _bulk body: 500 action+document pairs, ~200-byte documents.
func bulkBody() []byte {
	var b bytes.Buffer
	for i := range docsPerBody {
		b.WriteString(`{"create":{"_index":"logs"}}` + "\n")
		doc := fmt.Sprintf(`{"@timestamp":"2026-12-05T01:00:00.%03dZ","host":"web-7","level":"info","msg":"GET /api/orders/%d 200 `, i%1000, i)
		pad := docBytes - len(doc) - 2
		b.WriteString(doc + string(bytes.Repeat([]byte("x"), max(pad, 0))) + `"}` + "\n")
	}
	return b.Bytes()
}

const policy = `
storage: { fsync: always }
routes:
  - name: split
    match: { path: /split }
    protocol: elasticsearch
    max_body: 10MiB
    targets: [{ name: store, url: "http://127.0.0.1:1", rate: 0 }]
  - name: whole
    match: { path: /whole }
    max_body: 10MiB
    targets: [{ name: store, url: "http://127.0.0.1:1", rate: 0 }]
`

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// syncs counts the fdatasyncs of the stores serve opens, and their time.
var syncs struct{ n, ns atomic.Int64 }

func serve(b *testing.B, text string, dir string) (string, *buffer.Store, func()) {
	pol, err := policies.Parse("bench.yaml", []byte(text))
	if err != nil {
		b.Fatal(err)
	}
	st := buftest.Open(b, buffer.Config{Dir: dir, Sync: buffer.SyncAlways, Logger: quiet(),
		ObserveSync: func(d time.Duration) { syncs.n.Add(1); syncs.ns.Add(int64(d)) }})
	s, err := proxy.New(proxy.Config{Policy: pol, Queues: buftest.Queues(b, st, pol), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ln)
	return ln.Addr().String(), st, func() { s.Shutdown(context.Background()); st.Close() }
}

// load posts body to addr+path from conns clients for d and returns the
// requests answered with want.
func load(b *testing.B, addr, path string, body []byte, conns int, d time.Duration, want int) int64 {
	c := &fasthttp.HostClient{Addr: addr, MaxConns: conns}
	var ok, bad atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for time.Now().Before(stop) {
				req.Reset()
				req.Header.SetMethod("POST")
				req.SetRequestURI("http://" + addr + path)
				req.Header.SetContentType("application/x-ndjson")
				req.SetBodyRaw(body)
				if err := c.DoTimeout(req, resp, 30*time.Second); err != nil || resp.StatusCode() != want {
					bad.Add(1)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if bad.Load() > 0 {
		b.Errorf("%s: %d requests failed", path, bad.Load())
	}
	return ok.Load()
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkIngest alternates split and whole, ROUNDS times (default 5) of
// SECONDS each (default 5), with CONNS clients (default 16); b.N is ignored.
//
// Each round has a store of its own, deleted after it: on the VM these
// figures come from, the page cache growing into memory the guest has not
// touched before costs ~7 times the kernel time of reusing pages
// (`dd bs=1M count=2000` to a new file: 2.1 s of system time the first
// time, 0.3 s the next), which made the CPU per document rise round by
// round as one store grew (split 1.46 -> 2.31 µs, whole 0.27 -> 0.78 µs,
// rounds of 3 s): a cost of the machine, not of the store.
func BenchmarkIngest(b *testing.B) {
	rounds, secs, conns := env(b, "ROUNDS", 5), env(b, "SECONDS", 5), env(b, "CONNS", 16)
	body := bulkBody()
	var ws [2]buffer.WriterStats // split, whole: of every round
	defer func() {
		for i, name := range []string{"split", "whole"} {
			w := ws[i]
			b.Logf("%s writer: %d commits, %.0f requests a commit, %v a commit", name, w.Commits,
				float64(w.Requests)/float64(max(w.Commits, 1)), w.Time/time.Duration(max(w.Commits, 1)))
		}
	}()
	var split, whole, ratio, splitCPU, wholeCPU []float64
	for r := range rounds {
		dir := b.TempDir()
		addr, st, stop := serve(b, policy, dir)
		// run loads one path for d and returns its documents per second
		// and the process's CPU time per document (server and clients,
		// µs): the CPU figure does not depend on how much of the shared
		// machine the run got, which the rate does.
		run := func(path string, want int, d time.Duration) (rate, cpu float64) {
			c0, s0, sn0 := testutil.CPUTime(), syncs.ns.Load(), syncs.n.Load()
			n := load(b, addr, path, body, conns, d, want) * docsPerBody
			if k := syncs.n.Load() - sn0; k > 0 {
				b.Logf("%s: %d fdatasyncs, %v each, %.0f%% of the time", path, k, time.Duration((syncs.ns.Load()-s0)/k).Round(time.Microsecond),
					100*float64(syncs.ns.Load()-s0)/float64(d))
			}
			return float64(n) / d.Seconds(), float64(testutil.CPUTime()-c0) / float64(time.Microsecond) / float64(max(n, 1))
		}
		d := time.Duration(secs) * time.Second
		// Alternate which goes first, so that drift does not favour one.
		var s, w, sc, wc float64
		switch {
		case os.Getenv("SPLIT_ONLY") != "": // for profiling the split path alone
			s, sc = run("/split/_bulk", 200, d)
			b.Logf("round %d: split %.0f docs/s, %.2f µs CPU a doc", r+1, s, sc)
		case r%2 == 0:
			s, sc = run("/split/_bulk", 200, d)
			w, wc = run("/whole/_bulk", 202, d)
		default:
			w, wc = run("/whole/_bulk", 202, d)
			s, sc = run("/split/_bulk", 200, d)
		}
		for i, name := range []string{"split", "whole"} {
			q, _ := st.Queue(name, []string{"store"})
			qs := q.WriterStats()
			ws[i].Commits += qs.Commits
			ws[i].Requests += qs.Requests
			ws[i].Time += qs.Time
		}
		stop()
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		if w == 0 {
			continue
		}
		split, whole, ratio = append(split, s), append(whole, w), append(ratio, s/w)
		splitCPU, wholeCPU = append(splitCPU, sc), append(wholeCPU, wc)
		b.Logf("round %d: split %.0f docs/s, whole %.0f docs/s, ratio %.2f; CPU a doc: split %.2f µs, whole %.2f µs", r+1, s, w, s/w, sc, wc)
	}
	if len(ratio) == 0 {
		return
	}
	sort.Float64s(ratio)
	b.Logf("medians: split %.0f docs/s, whole %.0f docs/s; ratio of rounds: median %.2f, range %.2f-%.2f; CPU a doc: split %.2f µs, whole %.2f µs",
		median(split), median(whole), median(ratio), ratio[0], ratio[len(ratio)-1], median(splitCPU), median(wholeCPU))
	b.ReportMetric(median(split), "split-docs/s")
	b.ReportMetric(median(whole), "whole-docs/s")
	b.ReportMetric(median(ratio), "ratio")
	if median(splitCPU) > 0 {
		b.ReportMetric(median(splitCPU), "split-cpu-µs/doc")
		b.ReportMetric(median(wholeCPU), "whole-cpu-µs/doc")
	}
}

// BenchmarkDeliver fills a queue with DOCS documents (default 100000)
// through the elasticsearch route, then times their delivery in _bulk
// batches of 500 to a mock store that answers every item.
func BenchmarkDeliver(b *testing.B) {
	docs := env(b, "DOCS", 100000)
	rounds := env(b, "ROUNDS", 3)
	body := bulkBody()
	store := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ix, _ := logproto.BulkIndex(string(ctx.Path()))
		parsed, err := logproto.ParseBulk(ctx.PostBody(), ix)
		if err != nil {
			ctx.SetStatusCode(400)
			return
		}
		items := make([]logproto.ItemReply, len(parsed))
		for i, d := range parsed {
			items[i] = logproto.ItemReply{Op: d.Op, Index: d.Index, ID: d.ID, Status: 201}
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(logproto.AppendBulkReply(nil, time.Millisecond, items))
	}}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go store.Serve(sln)
	defer store.Shutdown()
	var rates []float64
	for r := range rounds {
		addr, st, stop := serve(b, policy, b.TempDir())
		for n := 0; n < docs; n += docsPerBody {
			c := &fasthttp.Client{}
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.Header.SetMethod("POST")
			req.SetRequestURI("http://" + addr + "/split/_bulk")
			req.SetBodyRaw(body)
			if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Fatalf("fill: %v %d", err, resp.StatusCode())
			}
		}
		cons, err := buftest.Queue(b, st, "split", "store").Consumer("store")
		if err != nil {
			b.Fatal(err)
		}
		u, _ := url.Parse("http://" + sln.Addr().String())
		target := policies.Target{Name: "store", URL: u, Rate: policies.Rate{Unlimited: true}, Protocol: policies.ProtocolElasticsearchBulk,
			Batch: &policies.Batch{MaxMessages: 500, MaxBytes: 5 << 20, MaxWait: 100 * time.Millisecond, Format: policies.FormatNDJSON}}
		dr, err := drain.New(drain.Config{Route: "split", Target: target, Logger: quiet()}, cons)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- dr.Run(ctx) }()
		for dr.Stats().Delivered < uint64(docs) {
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("delivered %d of %d in 5 minutes", dr.Stats().Delivered, docs)
			}
			time.Sleep(5 * time.Millisecond)
		}
		el := time.Since(start)
		cancel()
		<-done
		stop()
		rate := float64(docs) / el.Seconds()
		rates = append(rates, rate)
		b.Logf("round %d: %d documents delivered in %v: %.0f docs/s (%d requests)", r+1, docs, el.Round(time.Millisecond), rate, dr.Stats().Attempts)
	}
	b.ReportMetric(median(rates), "delivered-docs/s")
}
