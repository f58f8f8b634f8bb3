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
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/drain"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/proxy"
	"github.com/sluice-proxy/sluice/store"
)

// node is one running sluice: the store, the public listener and a drainer
// per (route, target). serve and demo both run one.
type node struct {
	log      *slog.Logger
	store    *buffer.Store
	queues   map[string]*buffer.Queue // of the buffer and spillover routes, by route
	proxy    *proxy.Server
	ln       net.Listener
	drainers []*drain.Drainer

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	serveErr chan error
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
func openQueues(st *buffer.Store, pol *policies.Policy) (map[string]*buffer.Queue, error) {
	qs := map[string]*buffer.Queue{}
	for _, r := range pol.Routes {
		if r.Mode != policies.ModeBuffer && r.Mode != policies.ModeSpillover {
			continue
		}
		names := make([]string, len(r.Targets))
		for i, t := range r.Targets {
			names[i] = t.Name
		}
		q, err := st.Queue(r.Name, names)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.Name, err)
		}
		qs[r.Name] = q
	}
	return qs, nil
}

// startNode opens the store, starts the drainers and serves on ln.
func startNode(pol *policies.Policy, ln net.Listener, log *slog.Logger) (*node, error) {
	st, err := buffer.Open(storeConfig(pol.Storage, log))
	if err != nil {
		return nil, err
	}
	queues, err := openQueues(st, pol)
	if err != nil {
		st.Close()
		return nil, err
	}
	contract := make(map[string]store.Queue, len(queues))
	for name, q := range queues {
		contract[name] = q
	}
	srv, err := proxy.New(proxy.Config{Policy: pol, Queues: contract, Logger: log})
	if err != nil {
		st.Close()
		return nil, err
	}
	n := &node{log: log, store: st, queues: queues, proxy: srv, ln: ln, serveErr: make(chan error, 1)}
	for _, r := range pol.Routes {
		q := queues[r.Name]
		if q == nil {
			continue // passthrough
		}
		for _, t := range r.Targets {
			c, err := q.Consumer(t.Name)
			if err != nil {
				st.Close()
				return nil, err
			}
			d, err := drain.New(drain.Config{Route: r.Name, Target: t, Logger: log, CallbackHeader: r.CallbackHeader, Callbacks: r.Callbacks}, c)
			if err != nil {
				st.Close()
				return nil, fmt.Errorf("route %q: target %q: %w", r.Name, t.Name, err)
			}
			n.drainers = append(n.drainers, d)
			// Estimated delivery times (202 body, status API, max_wait)
			// follow the rate in force, SetRate and Pause included.
			if err := srv.SetEstimator(r.Name, t.Name, d); err != nil {
				st.Close()
				return nil, err
			}
			if r.Mode == policies.ModeSpillover {
				// The route forwards straight to this target when it has
				// room; the drainer's bucket and slots cover both paths.
				if err := srv.SetDirect(r.Name, d); err != nil {
					st.Close()
					return nil, err
				}
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	for _, d := range n.drainers {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := d.Run(ctx); err != nil {
				log.Error("drainer stopped", "err", err)
			}
		}()
	}
	// Accept once every drainer runs: until then a spillover route would
	// store every request (TryDirect fails before Run applies the rate).
	// Bounded: a drainer that is slow to start costs only that.
	readyBy, cancelReady := context.WithTimeout(ctx, 5*time.Second)
	defer cancelReady()
	for _, d := range n.drainers {
		select {
		case <-d.Ready():
		case <-readyBy.Done():
			log.Warn("a drainer has not started after 5s; accepting anyway", "target", d.Target().Name)
		}
	}
	go func() { n.serveErr <- srv.Serve(ln) }()
	return n, nil
}

// stop shuts down in the order that loses nothing: stop accepting (requests
// in progress finish: each is acknowledged after its commit or refused), stop
// the drainers (attempts in flight are recorded), then close the store
// (pending commits are written and synced).
func (n *node) stop(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	if err := n.proxy.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("listener: %w", err))
	}
	n.cancel()
	n.wg.Wait()
	if err := n.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: %w", err))
	}
	return errors.Join(errs...)
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
}

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policyPath := fs.String("policy", "policy.yaml", "policy file")
	listen := fs.String("listen", "", "override the policy's listen address")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file until shutdown")
	traceFile := fs.String("trace", "", "write a runtime execution trace (go tool trace) to this file until shutdown")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *level)
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
	pol, err := policies.Load(*policyPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range pol.Warnings {
		log.Warn("policy: " + w.Error())
	}
	if *listen != "" {
		pol.Listen = *listen
	}
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
	log.Info("sluice serving", "version", versionString(), "listen", ln.Addr().String(),
		"policy", pol.File, "data", pol.Storage.Dir, "fsync", pol.Storage.Fsync.String(), "routes", len(pol.Routes))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case s := <-sigs:
		log.Info("shutting down", "signal", s.String())
	case err := <-n.serveErr:
		log.Error("listener failed", "err", err)
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
	fmt.Fprintf(stdout, "%s: ok (%d routes, %d targets, storage %s in %s, fsync %s)\n",
		pol.File, len(pol.Routes), targets, pol.Storage.Engine, pol.Storage.Dir, pol.Storage.Fsync)
	return 0
}
