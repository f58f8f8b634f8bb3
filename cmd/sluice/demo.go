package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/sluice-proxy/sluice/loadtest"
	"github.com/sluice-proxy/sluice/policies"
)

// demoPolicy is the policy the demo runs: one buffered route whose target is
// held to the mock downstream's capacity. It goes through the real parser.
const demoPolicy = `
listen: 127.0.0.1:0
storage:
  dir: %q
  fsync: always
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    idempotency_header: Idempotency-Key
    targets:
      - name: inventory
        url: %s
        rate: %g/s
        burst: %d
        concurrency: 32
        timeout: 5s
        retry: { max_attempts: 20, initial: 100ms, max: 2s }
`

func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	orders := fs.Int("orders", 3000, "orders in the burst")
	capacity := fs.Float64("capacity", 300, "the mock downstream's capacity, requests/s (sluice's rate for it)")
	factor := fs.Float64("burst-factor", 10, "the burst's rate as a multiple of the capacity")
	keep := fs.Bool("keep", false, "keep the temporary data directory")
	level := fs.String("log-level", "warn", "debug, info, warn or error")
	timeout := fs.Duration("timeout", 55*time.Second, "give up waiting for the drain after this long")
	reportDir := fs.String("report-dir", "", "write report.html, report.json and chart.png here (default ./sluice-report-<timestamp>)")
	progress := fs.String("progress", "auto", "auto (bars on a terminal, else a line a second), bars, plain or off")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *orders <= 0 || *capacity <= 0 || *factor <= 0 {
		fmt.Fprintln(stderr, "sluice demo: --orders, --capacity and --burst-factor must be positive")
		return 2
	}
	mode, err := parseProgressMode(*progress)
	if err != nil {
		fmt.Fprintln(stderr, "sluice demo:", err)
		return 2
	}
	log, err := newLogger(stderr, *level, "text")
	if err != nil {
		fmt.Fprintln(stderr, "sluice demo:", err)
		return 2
	}
	if *reportDir == "" {
		*reportDir = "sluice-report-" + time.Now().Format("20060102-150405")
	}
	dir, err := os.MkdirTemp("", "sluice-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "sluice demo:", err)
		return 1
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}

	burst := max(1, int(*capacity/10))
	ds, err := loadtest.StartDownstream(loadtest.DownstreamConfig{Rate: *capacity, Burst: burst})
	if err != nil {
		fmt.Fprintln(stderr, "sluice demo:", err)
		return 1
	}
	defer ds.Close()

	pol, err := policies.Parse("demo.yaml", fmt.Appendf(nil, demoPolicy, dir, ds.URL(), *capacity, burst))
	if err != nil {
		fmt.Fprintln(stderr, "sluice demo: built-in policy:", err)
		return 1
	}
	ln, err := net.Listen("tcp", pol.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "sluice demo:", err)
		return 1
	}
	n, err := startNode(pol, ln, log)
	if err != nil {
		ln.Close()
		fmt.Fprintln(stderr, "sluice demo:", err)
		return 1
	}
	stopped := false
	defer func() {
		if !stopped {
			n.stop(10 * time.Second)
		}
	}()

	offered := *capacity * *factor
	s := session{
		gen: loadtest.GenConfig{
			URL:             "http://" + ln.Addr().String() + "/api/orders",
			Pacer:           loadtest.ConstantPacer{PerSecond: offered},
			MaxRequests:     uint64(*orders),
			Duration:        time.Duration(float64(*orders)/offered*float64(time.Second)) + time.Second,
			IdempotencyKeys: true,
			Workers:         128,
		},
		ds: ds,
		// sluice's own count: what is stored and not yet delivered.
		backlog: func() uint64 {
			q := n.queues["orders"].Stats()
			tg := q.Targets[0]
			return tg.Pending + uint64(tg.InFlight) + uint64(tg.Retrying)
		},
		drainTimeout: *timeout,
		progress:     mode,
		progressOut:  stdout,
	}
	fmt.Fprintf(stdout, "sluice demo: %d orders at %.0f/s (%gx) into sluice; the downstream takes %.0f/s (burst %d)\n",
		*orders, offered, *factor, *capacity, burst)
	fmt.Fprintf(stdout, "data in %s (fsync: always)\n\n", dir)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	out := s.run(ctx)
	cancel()
	stopped = true
	if err := n.stop(10 * time.Second); err != nil {
		fmt.Fprintln(stderr, "sluice demo: stop:", err)
	}
	return s.finish(out, false, *reportDir, stdout, stderr, "sluice demo")
}
