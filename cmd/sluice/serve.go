package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/admin"
	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/drain"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/proxy"
	"github.com/sluice-proxy/sluice/store"
)

// node is one running sluice: the store, the public listener, a drainer
// per (route, target) and, if the policy has one, the admin listener.
// serve and demo both run one.
type node struct {
	log   *slog.Logger
	store engine
	proxy *proxy.Server
	ln    net.Listener
	lock  *dirLock // the data directory's lock; nil if not taken (tests on a temporary directory)

	// reload reads the policy again (nil: reload is not available); it is
	// set by serve, which knows the file and the flags over it.
	reload   func() (*policies.Policy, error)
	reloadMu sync.Mutex // one reload at a time

	// noLoops: server.event_loops is 0, so the drainers make their
	// attempts in goroutines too, not on delivery loops (read at start,
	// as the listener's).
	noLoops bool

	mu     sync.Mutex // guards pol, queues and runs
	pol    *policies.Policy
	queues map[string]nodeQueue // of the buffer and spillover routes, by route; a reload adds, never removes
	runs   map[runKey]*targetRun

	controls   *admin.Controls
	metrics    *admin.Metrics
	admin      *admin.Server
	adminLn    net.Listener
	adminErr   chan error
	adminEnd   chan struct{} // closed when the admin server's Serve has returned
	stopCtl    chan struct{} // stops the controls' expiry loop
	dead       deadCounts    // the state's dead-letter counts
	countCache countCache    // the state's message counts

	ctx      context.Context // the drainers' parent
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	serveErr chan error
	stopping atomic.Bool
}

// runKey names a target of a route.
type runKey struct{ route, target string }

// targetRun is the drainer of one target. A reload that changes the target
// replaces the drainer (the old one's attempts in flight finish and are
// recorded first); base keeps the counters of the drainers before it.
type targetRun struct {
	route   policies.Route // the route as the drainer was configured
	target  policies.Target
	d       *drain.Drainer
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run returns
	base    drain.Stats   // counters of earlier drainers of this target
	retired bool          // the route was removed by a reload: still drains, accepts nothing
}

func storeConfig(st policies.Storage, log *slog.Logger) buffer.Config {
	cfg := buffer.Config{
		Dir:          st.Dir,
		SegmentBytes: st.SegmentBytes,
		Retention:    st.Retention,
		MaxBytes:     st.MaxBytes,
		MinFreeBytes: st.MinFreeBytes,
		Logger:       log,
	}
	switch st.Fsync.Mode {
	case policies.FsyncAlways:
		cfg.Sync = buffer.SyncAlways
	case policies.FsyncInterval:
		cfg.Sync, cfg.SyncInterval = buffer.SyncInterval, st.Fsync.Interval
	case policies.FsyncNever:
		cfg.Sync = buffer.SyncNever
	}
	return cfg
}

// openQueues opens the queue of every buffer and spillover route of pol.
func openQueues(st engine, pol *policies.Policy) (map[string]nodeQueue, error) {
	qs := map[string]nodeQueue{}
	for _, r := range pol.Routes {
		if r.Mode != policies.ModeBuffer && r.Mode != policies.ModeSpillover {
			continue
		}
		q, err := st.queue(r)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.Name, err)
		}
		qs[r.Name] = q
	}
	return qs, nil
}

// contract returns the queues as the proxy takes them.
func contract(queues map[string]nodeQueue) map[string]store.Queue {
	out := make(map[string]store.Queue, len(queues))
	for name, q := range queues {
		out[name] = q
	}
	return out
}

// queue returns the queue of a buffer or spillover route (one a reload
// removed too); nil if none.
func (n *node) queue(route string) nodeQueue {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.queues[route]
}

// startNode takes the data directory's lock, opens the store, starts the
// drainers (with the operators' controls applied), the admin listener if
// the policy has one, and serves on ln.
func startNode(pol *policies.Policy, ln net.Listener, log *slog.Logger) (n *node, err error) {
	lock, err := lockDir(pol.Storage.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.release()
		}
	}()
	controls, err := admin.OpenControls(pol.Storage.Dir, nil, log)
	if err != nil {
		return nil, err
	}
	var adminLn net.Listener
	if pol.Admin != nil {
		if adminLn, err = net.Listen("tcp", pol.Admin.Listen); err != nil {
			return nil, fmt.Errorf("admin listener: %w", err)
		}
		defer func() {
			if err != nil {
				adminLn.Close()
			}
		}()
	}
	n = &node{log: log, ln: ln, lock: lock, pol: pol, runs: map[runKey]*targetRun{}, controls: controls,
		noLoops:  pol.Server.EventLoops == policies.EventLoopsOff,
		serveErr: make(chan error, 1), adminErr: make(chan error, 1), adminEnd: make(chan struct{}), stopCtl: make(chan struct{})}
	n.metrics = admin.NewMetrics(n.State)
	st, err := openEngine(pol.Storage, log, n.metrics.ObserveSync)
	if err != nil {
		return nil, err
	}
	queues, err := openQueues(st, pol)
	if err != nil {
		st.Close()
		return nil, err
	}
	var adminToken string // also opens the status API to operators (see proxy.Config)
	if pol.Admin != nil {
		adminToken = pol.Admin.Token
	}
	srv, err := proxy.New(proxy.Config{Policy: pol, Queues: contract(queues), Logger: log, Observer: n.metrics, AdminToken: adminToken})
	if err != nil {
		st.Close()
		return nil, err
	}
	n.store, n.queues, n.proxy = st, queues, srv
	n.ctx, n.cancel = context.WithCancel(context.Background())
	var started []*targetRun
	for _, r := range pol.Routes {
		if r.Mode != policies.ModeBuffer && r.Mode != policies.ModeSpillover {
			continue
		}
		for _, t := range r.Targets {
			run, err := n.newRun(r, t, drain.Stats{})
			if err != nil {
				n.cancel()
				st.Close()
				return nil, err
			}
			n.runs[runKey{r.Name, t.Name}] = run
			started = append(started, run)
		}
	}
	// An operator's pause survives a restart: applied before any drainer runs.
	if err := controls.Attach(n); err != nil {
		n.cancel()
		st.Close()
		return nil, err
	}
	for _, run := range started {
		n.start(run)
	}
	// Accept once every drainer runs: until then a spillover route would
	// store every request (TryDirect fails before Run applies the rate).
	// Bounded: a drainer that is slow to start costs only that.
	readyBy, cancelReady := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancelReady()
	for _, run := range started {
		select {
		case <-run.d.Ready():
		case <-readyBy.Done():
			log.Warn("a drainer has not started after 5s; accepting anyway", "target", run.target.Name)
		}
	}
	go controls.Run(n.stopCtl)
	if adminLn != nil {
		n.adminLn = adminLn
		if n.admin, err = admin.New(admin.Config{Token: pol.Admin.Token, Node: n, Controls: controls, Dead: deadLetters{n}, Messages: messages{n}, Reload: n.reloadAPI, Metrics: n.metrics, Logger: log}); err != nil {
			close(n.stopCtl)
			n.cancel()
			n.wg.Wait()
			st.Close()
			return nil, err
		}
		go func() {
			defer close(n.adminEnd)
			n.adminErr <- n.admin.Serve(adminLn)
		}()
	}
	go func() { n.serveErr <- srv.Serve(ln) }()
	return n, nil
}

// newRun builds the drainer of target t of route r and connects it to the
// proxy's estimates (and the spillover route's direct path). It does not
// start it.
func (n *node) newRun(r policies.Route, t policies.Target, base drain.Stats) (*targetRun, error) {
	q := n.queue(r.Name)
	if q == nil {
		return nil, fmt.Errorf("route %q: no queue", r.Name)
	}
	c, err := q.consumer(t)
	if err != nil {
		return nil, fmt.Errorf("route %q: %w", r.Name, err)
	}
	d, err := drain.New(drain.Config{Route: r.Name, Target: t, Logger: n.log, CallbackHeader: r.CallbackHeader, Callbacks: r.Callbacks, NoLoop: n.noLoops}, c)
	if err != nil {
		return nil, fmt.Errorf("route %q: target %q: %w", r.Name, t.Name, err)
	}
	return &targetRun{route: r, target: t, d: d, base: base, done: make(chan struct{})}, nil
}

// start runs run's drainer and points the proxy's estimates (and a
// spillover route's direct path) at it.
func (n *node) start(run *targetRun) {
	ctx, cancel := context.WithCancel(n.ctx)
	run.cancel = cancel
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(run.done)
		if err := run.d.Run(ctx); err != nil {
			n.log.Error("drainer stopped", "err", err)
		}
	}()
	// Estimated delivery times (202 body, status API, max_wait) follow the
	// rate in force, SetRate and Pause included.
	if err := n.proxy.SetEstimator(run.route.Name, run.target.Name, run.d); err != nil && !run.retired {
		n.log.Warn("estimates", "route", run.route.Name, "target", run.target.Name, "err", err)
	}
	if run.route.Mode == policies.ModeSpillover {
		// The route forwards straight to this target when it has room; the
		// drainer's bucket and slots cover both paths.
		if err := n.proxy.SetDirect(run.route.Name, run.d); err != nil && !run.retired {
			n.log.Warn("spillover", "route", run.route.Name, "err", err)
		}
	}
}

// stop shuts down in the order that loses nothing: stop accepting (requests
// in progress finish: each is acknowledged after its commit or refused), stop
// the drainers (attempts in flight are recorded), then close the store
// (pending commits are written and synced), then release the data
// directory's lock.
func (n *node) stop(timeout time.Duration) error {
	n.stopping.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	if err := n.proxy.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("listener: %w", err))
	}
	if n.admin != nil {
		if err := n.admin.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("admin listener: %w", err))
		}
		<-n.adminEnd // its sampling of the state has stopped: the store may close
	}
	n.reloadMu.Lock() // no reload starts drainers from here on
	defer n.reloadMu.Unlock()
	close(n.stopCtl)
	n.cancel()
	n.wg.Wait()
	if err := n.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: %w", err))
	}
	n.lock.release()
	return errors.Join(errs...)
}

// newLogger returns a logger at level writing format: "text" (key=value,
// the default) or "json" (one object per line).
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policyPath := fs.String("policy", "policy.yaml", "policy file")
	listen := fs.String("listen", "", "override the policy's listen address")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file until shutdown")
	traceFile := fs.String("trace", "", "write a runtime execution trace (go tool trace) to this file until shutdown")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *level, *logFormat)
	if err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 2
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(stderr, "sluice serve:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "sluice serve:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			fmt.Fprintln(stderr, "sluice serve:", err)
			return 1
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			fmt.Fprintln(stderr, "sluice serve:", err)
			return 1
		}
		defer trace.Stop()
	}
	load := func() (*policies.Policy, error) {
		pol, err := policies.Load(*policyPath)
		if err != nil {
			return nil, err
		}
		for _, w := range pol.Warnings {
			log.Warn("policy: " + w.Error())
		}
		if *listen != "" {
			pol.Listen = *listen
		}
		return pol, nil
	}
	pol, err := load()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// Signals are caught before anything listens: a SIGHUP that a health
	// check's success triggers must find the handler (Go's default for
	// SIGHUP ends the process).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ln, err := net.Listen("tcp", pol.Listen)
	if err != nil {
		fmt.Fprintf(stderr, "sluice serve: listen %s: %v\n", pol.Listen, err)
		return 1
	}
	n, err := startNode(pol, ln, log)
	if err != nil {
		ln.Close()
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 1
	}
	n.reload = load
	attrs := []any{"version", versionString(), "listen", ln.Addr().String(),
		"policy", pol.File, "data", pol.Storage.Dir, "engine", pol.Storage.Engine, "fsync", pol.Storage.Fsync.String(), "routes", len(pol.Routes)}
	if n.adminLn != nil {
		attrs = append(attrs, "admin", n.adminLn.Addr().String())
	}
	log.Info("sluice serving", attrs...)

wait:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				log.Info("reloading the policy", "signal", s.String(), "policy", pol.File)
				n.doReload() // logs what changed, or the errors
				continue
			}
			log.Info("shutting down", "signal", s.String())
			break wait
		case err := <-n.serveErr:
			log.Error("listener failed", "err", err)
			break wait
		case err := <-n.adminErr:
			if err != nil {
				log.Error("admin listener failed", "err", err)
				break wait
			}
		}
	}
	if err := n.stop(30 * time.Second); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	log.Info("stopped cleanly")
	return 0
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policyPath := fs.String("policy", "policy.yaml", "policy file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pol, err := policies.Load(*policyPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range pol.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	targets := 0
	for _, r := range pol.Routes {
		targets += len(r.Targets)
	}
	storage := fmt.Sprintf("storage %s in %s, fsync %s", pol.Storage.Engine, pol.Storage.Dir, pol.Storage.Fsync)
	if j := pol.Storage.JetStream; j != nil {
		if len(j.URLs) == 0 {
			storage = fmt.Sprintf("storage jetstream, embedded server in %s", pol.Storage.Dir)
		} else {
			storage = fmt.Sprintf("storage jetstream on %d servers, replicas %d, streams %s_*", len(j.URLs), j.Replicas, j.StreamPrefix)
		}
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes, %d targets, %s)\n", pol.File, len(pol.Routes), targets, storage)
	return 0
}
