package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/sluice-proxy/sluice/loadtest"
)

const loadtestUsage = `Usage:
  sluice loadtest run --target URL [--rate N | --spike BASE,FACTOR,AT,FOR | --scenario FILE] [flags]
      offer load to a proxy (or any HTTP server); with --downstream-listen, also play
      the proxy's target, wait for the drain and verify that nothing was lost
  sluice loadtest downstream --listen 127.0.0.1:8081 [--rate N ...]
      run only the mock downstream until Ctrl-C, then print what it received

Run 'sluice loadtest run -h' or 'sluice loadtest downstream -h' for the flags.
`

func cmdLoadtest(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, loadtestUsage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdLoadtestRun(args[1:], stdout, stderr)
	case "downstream":
		return cmdLoadtestDownstream(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, loadtestUsage)
		return 0
	}
	fmt.Fprintf(stderr, "sluice loadtest: unknown command %q\n\n%s", args[0], loadtestUsage)
	return 2
}

// downstreamFlags are the mock downstream's knobs, under a prefix: "" for
// `loadtest downstream`, "downstream-" for `loadtest run`.
type downstreamFlags struct {
	rate        *float64
	burst       *int
	concurrency *int
	latency     *time.Duration
	failRate    *float64
	throttle    *float64
	reset       *float64
	hang        *float64
	hangFor     *time.Duration
	seed        *int64
}

func addDownstreamFlags(fs *flag.FlagSet, prefix string) downstreamFlags {
	return downstreamFlags{
		rate:        fs.Float64(prefix+"rate", 0, "the mock downstream's capacity, requests/s; over it: 429 + Retry-After (0 = unlimited)"),
		burst:       fs.Int(prefix+"burst", 0, "its token bucket depth (default rate/10, at least 1)"),
		concurrency: fs.Int(prefix+"concurrency", 0, "most requests at once; over it: 503 + Retry-After (0 = unlimited)"),
		latency:     fs.Duration(prefix+"latency", 0, "added to every request within capacity"),
		failRate:    fs.Float64(prefix+"fail-rate", 0, "fraction in [0,1] of requests within capacity answered 503"),
		throttle:    fs.Float64(prefix+"429-rate", 0, "fraction in [0,1] of requests answered 429 + Retry-After: 1 whatever the capacity"),
		reset:       fs.Float64(prefix+"reset-rate", 0, "fraction in [0,1] of connections reset with no answer"),
		hang:        fs.Float64(prefix+"hang-rate", 0, "fraction in [0,1] of requests answered only after --"+prefix+"hang-for (a timeout for the sender)"),
		hangFor:     fs.Duration(prefix+"hang-for", 30*time.Second, "how long a hung request is held"),
		seed:        fs.Int64(prefix+"seed", 1, "seed of the failure draws"),
	}
}

func (f downstreamFlags) config(listen string) loadtest.DownstreamConfig {
	return loadtest.DownstreamConfig{
		Listen: listen, Rate: *f.rate, Burst: *f.burst, Concurrency: *f.concurrency,
		Latency: *f.latency, FailRate: *f.failRate, ThrottleRate: *f.throttle, ResetRate: *f.reset,
		HangRate: *f.hang, HangFor: *f.hangFor, Seed: *f.seed,
	}
}

// pacerFlags chooses the offered load: exactly one of --rate, --spike or
// --scenario.
func parsePacer(rate float64, spike, scenario string) (p loadtest.Pacer, length time.Duration, err error) {
	set := 0
	for _, ok := range []bool{rate > 0, spike != "", scenario != ""} {
		if ok {
			set++
		}
	}
	switch {
	case set == 0:
		return nil, 0, errors.New("one of --rate, --spike or --scenario is required")
	case set > 1:
		return nil, 0, errors.New("--rate, --spike and --scenario exclude one another")
	case scenario != "":
		sp, err := loadtest.LoadScenario(scenario)
		if err != nil {
			return nil, 0, err
		}
		return sp, sp.Duration(), nil
	case spike != "":
		sp, err := parseSpike(spike)
		if err != nil {
			return nil, 0, err
		}
		return sp, 2*sp.At + sp.For, nil // as long after the spike as before it
	}
	return loadtest.ConstantPacer{PerSecond: rate}, 10 * time.Second, nil
}

// parseSpike reads "BASE,FACTOR,AT,FOR", e.g. "100,10,5s,3s": 100/s, and
// 1000/s from 5s to 8s.
func parseSpike(s string) (loadtest.SpikePacer, error) {
	bad := func(what string) (loadtest.SpikePacer, error) {
		return loadtest.SpikePacer{}, fmt.Errorf("--spike %q: %s; want BASE,FACTOR,AT,FOR such as 100,10,5s,3s", s, what)
	}
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return bad(fmt.Sprintf("%d fields", len(parts)))
	}
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	base, err := strconv.ParseFloat(parts[0], 64)
	if err != nil || base < 0 {
		return bad("BASE is not a rate of 0 or more")
	}
	factor, err := strconv.ParseFloat(parts[1], 64)
	if err != nil || factor <= 0 {
		return bad("FACTOR is not a positive number")
	}
	at, err := time.ParseDuration(parts[2])
	if err != nil || at < 0 {
		return bad("AT is not a duration such as 5s")
	}
	dur, err := time.ParseDuration(parts[3])
	if err != nil || dur <= 0 {
		return bad("FOR is not a positive duration such as 3s")
	}
	return loadtest.SpikePacer{Base: base, Factor: factor, At: at, For: dur}, nil
}

type headerFlag map[string]string

func (h headerFlag) String() string { return "" }

func (h headerFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("want \"Name: value\", got %q", v)
	}
	h[strings.TrimSpace(k)] = strings.TrimSpace(val)
	return nil
}

func cmdLoadtestRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "", "URL to send to, e.g. http://127.0.0.1:8080/api/orders (required)")
	method := fs.String("method", "POST", "HTTP method")
	rate := fs.Float64("rate", 0, "constant offered rate, requests/s")
	spike := fs.String("spike", "", "BASE,FACTOR,AT,FOR: BASE/s, and BASE*FACTOR/s for FOR from AT, e.g. 100,10,5s,3s")
	scenario := fs.String("scenario", "", "a YAML file of steps: - { rate: 100, for: 5s } / - { from: 100, to: 1000, for: 10s }")
	duration := fs.Duration("duration", 0, "how long to offer load (default: the scenario's length; 2*AT+FOR for a spike; 10s for a rate)")
	requests := fs.Uint64("requests", 0, "stop after this many requests (0 = no cap)")
	bodyFile := fs.String("body-file", "", "body template; "+loadtest.SeqPlaceholder+" becomes the sequence number (default: a 1 KiB JSON order)")
	requestsFile := fs.String("requests-file", "", "a file of bodies, one a line (NDJSON), sent in turn; "+loadtest.SeqPlaceholder+" works too")
	idem := fs.Bool("idempotency", false, "send Idempotency-Key: lt-<run>-<seq> with every request")
	headers := headerFlag{}
	fs.Var(headers, "header", `extra header "Name: value" (repeatable)`)
	workers := fs.Int("workers", 256, "most requests in flight; a send due beyond that is dropped and counted")
	timeout := fs.Duration("timeout", 10*time.Second, "per request")
	dsListen := fs.String("downstream-listen", "", "run the mock downstream on this loopback address (the proxy's target), and verify delivery")
	ds := addDownstreamFlags(fs, "downstream-")
	drainTimeout := fs.Duration("drain-timeout", 2*time.Minute, "with --downstream-listen: longest wait for the backlog to drain after the load")
	reportDir := fs.String("report-dir", "", "write report.html, report.json and chart.png here")
	asJSON := fs.Bool("json", false, "print the report as JSON on stdout (progress goes to stderr)")
	strict := fs.Bool("strict", false, "fail on duplicate deliveries too (by default they are reported: delivery is at least once)")
	progress := fs.String("progress", "auto", "auto (bars on a terminal, else a line a second), bars, plain or off")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "sluice loadtest run: "+format+"\n", args...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	if *target == "" {
		return usage("--target is required")
	}
	pacer, length, err := parsePacer(*rate, *spike, *scenario)
	if err != nil {
		return usage("%v", err)
	}
	mode, err := parseProgressMode(*progress)
	if err != nil {
		return usage("%v", err)
	}
	if *dsListen == "" {
		dsSet := ""
		fs.Visit(func(f *flag.Flag) {
			if strings.HasPrefix(f.Name, "downstream-") || f.Name == "drain-timeout" {
				dsSet = f.Name
			}
		})
		if dsSet != "" {
			return usage("--%s needs --downstream-listen", dsSet)
		}
	}
	gen := loadtest.GenConfig{
		URL: *target, Method: *method, Pacer: pacer,
		Duration: *duration, MaxRequests: *requests,
		Header: headers, IdempotencyKeys: *idem,
		Workers: *workers, Timeout: *timeout,
	}
	if gen.Duration == 0 && gen.MaxRequests == 0 {
		gen.Duration = length
	}
	switch {
	case *bodyFile != "" && *requestsFile != "":
		return usage("--body-file and --requests-file exclude one another")
	case *bodyFile != "":
		b, err := os.ReadFile(*bodyFile)
		if err != nil {
			return usage("--body-file: %v", err)
		}
		gen.Body = loadtest.TemplateBody(b)
	case *requestsFile != "":
		b, err := os.ReadFile(*requestsFile)
		if err != nil {
			return usage("--requests-file: %v", err)
		}
		if gen.Body, err = loadtest.LinesBody(b); err != nil {
			return usage("--requests-file %s: %v", *requestsFile, err)
		}
	}
	if err := gen.Validate(); err != nil {
		return usage("%v", err)
	}

	info := stdout // where progress and notes go: stderr when stdout is JSON
	if *asJSON {
		info = stderr
	}
	s := session{
		gen: gen, drainTimeout: *drainTimeout, progress: mode, progressOut: info, allowDuplicates: !*strict,
	}
	if *dsListen != "" {
		d, err := loadtest.StartDownstream(ds.config(*dsListen))
		if err != nil {
			return usage("%v", err)
		}
		defer d.Close()
		s.ds = d
		fmt.Fprintf(info, "mock downstream on %s (%s); point the proxy's target at it\n", d.URL(), capacityText(d.Stats()))
	}
	fmt.Fprintf(info, "offering %v to %s %s\n", pacer, gen.Method, gen.URL)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	out := s.run(ctx)
	stop()
	return s.finish(out, *asJSON, *reportDir, stdout, stderr, "sluice loadtest run")
}

func capacityText(s loadtest.DownstreamStats) string {
	c := "unlimited"
	if s.Rate > 0 {
		c = fmt.Sprintf("%g/s, burst %d", s.Rate, s.Burst)
	}
	if s.Concurrency > 0 {
		c += fmt.Sprintf(", concurrency %d", s.Concurrency)
	}
	return c
}

// progressMode is how a run shows its progress.
type progressMode string

const (
	progressAuto  progressMode = "auto"
	progressBars  progressMode = "bars"
	progressPlain progressMode = "plain"
	progressOff   progressMode = "off"
)

func parseProgressMode(s string) (progressMode, error) {
	switch m := progressMode(s); m {
	case progressAuto, progressBars, progressPlain, progressOff:
		return m, nil
	}
	return "", fmt.Errorf("--progress %q: want auto, bars, plain or off", s)
}

// resolve says whether to show progress on w, and whether as bars: auto
// draws bars only on a terminal that can redraw them.
func (m progressMode) resolve(w io.Writer) (show, bars bool) {
	switch m {
	case progressOff:
		return false, false
	case progressBars:
		return true, true
	case progressPlain:
		return true, false
	}
	return true, isTerminal(w) && os.Getenv("TERM") != "dumb"
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// session is one run of the harness, as `loadtest run` and `demo` wire
// it: offer load, show progress, wait for the drain when a downstream is
// watched, and build the report.
type session struct {
	gen loadtest.GenConfig
	ds  *loadtest.Downstream // nil: not observed, nothing to verify
	// backlog, if set, is the proxy's own count of undelivered messages;
	// else the backlog is accepted ids minus ids the downstream received.
	backlog         func() uint64
	drainTimeout    time.Duration
	progress        progressMode
	progressOut     io.Writer
	allowDuplicates bool
}

type outcome struct {
	report   loadtest.Report
	genErr   error // from Generate: the context ended, or a bad config
	drainErr error // from WaitDrained
}

func plannedSends(g loadtest.GenConfig) uint64 {
	var n uint64
	if g.Duration > 0 {
		n = loadtest.Hits(g.Pacer, g.Duration)
	}
	if g.MaxRequests > 0 && (n == 0 || g.MaxRequests < n) {
		n = g.MaxRequests
	}
	return n
}

func (s session) run(ctx context.Context) outcome {
	rec := loadtest.NewRecorder()
	planned := plannedSends(s.gen)
	sample := func() loadtest.ProgressSample {
		st := rec.Snapshot()
		p := loadtest.ProgressSample{Planned: planned, Sent: st.Offered, Accepted: st.Accepted}
		if s.ds != nil {
			d := s.ds.Stats()
			p.Observed = true
			p.Delivered = uint64(d.IDs)
			p.Backlog = uint64(max(0, st.IDs-d.IDs))
		}
		if s.backlog != nil {
			p.Observed = true
			p.Backlog = s.backlog()
		}
		return p
	}
	var prog *loadtest.Progress
	if show, bars := s.progress.resolve(s.progressOut); show {
		prog = loadtest.StartProgress(loadtest.ProgressConfig{Out: s.progressOut, Bars: bars, Sample: sample})
	}
	var o outcome
	o.genErr = loadtest.Generate(ctx, s.gen, rec)
	if s.ds != nil && o.genErr == nil {
		o.drainErr = loadtest.WaitDrained(ctx, rec.AcceptedIDs(), s.ds, s.drainTimeout)
	}
	if s.backlog != nil && o.genErr == nil && o.drainErr == nil {
		// The downstream has answered every id; give the proxy a moment to
		// record the last outcomes, so that its own backlog reads 0 too.
		for deadline := time.Now().Add(5 * time.Second); s.backlog() > 0 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if prog != nil {
		prog.Stop()
	}

	var ds loadtest.DownstreamStats
	var v loadtest.Verdict
	if s.ds != nil {
		ds = s.ds.Stats()
		v = loadtest.Verify(rec.Accepted(), s.ds.Arrivals(), ds.Arrivals.Counts)
	}
	o.report = loadtest.NewReport(s.gen, rec.Snapshot(), ds, v)
	o.report.Unverified = s.ds == nil
	o.report.AllowDuplicates = s.allowDuplicates
	return o
}

// finish prints the report (text, or JSON), writes the report files if
// dir is set, and returns the exit code: 0 for a pass, 1 otherwise.
func (s session) finish(o outcome, asJSON bool, dir string, stdout, stderr io.Writer, cmd string) int {
	info := stdout
	var err error
	if asJSON {
		info = stderr
		err = o.report.WriteJSON(stdout)
	} else {
		fmt.Fprintln(stdout)
		err = o.report.WriteText(stdout)
	}
	code := 0
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		code = 1
	}
	if dir != "" {
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs // say exactly where the files are
		}
		f, err := o.report.WriteFiles(dir)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
			code = 1
		} else {
			fmt.Fprintf(info, "\nreport  %s\n        %s\n        %s\n", f.HTML, f.JSON, f.Chart)
		}
	}
	if o.genErr != nil {
		fmt.Fprintf(stderr, "%s: load stopped early: %v\n", cmd, o.genErr)
		code = 1
	}
	if o.drainErr != nil {
		fmt.Fprintf(stderr, "%s: the backlog did not drain: %v\n", cmd, o.drainErr)
		code = 1
	}
	if !o.report.Pass() {
		code = 1
	}
	return code
}

func cmdLoadtestDownstream(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest downstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8081", "loopback address to listen on")
	df := addDownstreamFlags(fs, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice loadtest downstream: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := loadtest.StartDownstream(df.config(*listen))
	if err != nil {
		fmt.Fprintln(stderr, "sluice loadtest downstream:", err)
		return 2
	}
	fmt.Fprintf(stdout, "mock downstream listening on %s (%s); Ctrl-C to stop\n", d.URL(), capacityText(d.Stats()))
	<-ctx.Done()
	stop()
	closeErr := d.Close()

	s := d.Stats()
	dups := 0
	for id, n := range d.Deliveries() {
		if id != "" && n > 1 {
			dups += n - 1
		}
	}
	row := func(name, format string, args ...any) {
		fmt.Fprintf(stdout, "  %-15s%s\n", name, fmt.Sprintf(format, args...))
	}
	fmt.Fprintln(stdout, "\nmock downstream")
	row("capacity", "%s", capacityText(s))
	row("requests", "%d", s.Requests)
	row("received", "%d answered 2xx: %d distinct X-Sluice-Ids, %d duplicates, %d without an id",
		s.Received, s.IDs, dups, d.Deliveries()[""])
	row("rejected", "%d (429 over rate %d, 503 over concurrency %d, 503 injected %d)",
		s.Rejected, s.Throttled, s.Overloaded, s.Failed)
	row("peak", "%d/s answered 2xx, %d/s of all requests, max concurrent %d",
		s.MaxPerSecond, s.MaxAttemptsPerSecond, s.MaxConcurrent)
	if closeErr != nil {
		fmt.Fprintln(stderr, "sluice loadtest downstream: close:", closeErr)
		return 1
	}
	return 0
}
