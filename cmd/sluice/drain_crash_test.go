package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/loadtest"
)

// drainPolicy: one route, one target with no rate limit and concurrency
// 64: the full-speed drain, where outcomes go through the journal.
func drainPolicy(t *testing.T, dir, addr, url, rate string) string {
	t.Helper()
	p := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf(`listen: %q
storage:
  dir: %q
  fsync: always
  segment_bytes: 1MiB
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    idempotency_header: Idempotency-Key
    targets:
      - name: store
        url: %s
        rate: %s
        concurrency: 64
        retry: { max_attempts: 50, initial: 20ms, max: 200ms }
`, addr, filepath.Join(dir, "data"), url, rate)
	writeFile(t, p, pol)
	return p
}

// fill posts n orders from 16 clients and returns id -> Idempotency-Key
// of every one answered 202.
func fill(t *testing.T, addr string, from, n int) map[string]string {
	t.Helper()
	var mu sync.Mutex
	acked := map[string]string{}
	client := &http.Client{Timeout: 5 * time.Second}
	next := make(chan int)
	go func() {
		for i := from; i < from+n; i++ {
			next <- i
		}
		close(next)
	}()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if id, key := postOrder(t, client, addr, i, 900); id != "" {
					mu.Lock()
					acked[id] = key
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return acked
}

// checkCopies fails if a delivery of an acknowledged id carried another
// Idempotency-Key than the one it was posted with, and returns the number
// of duplicate deliveries.
func checkCopies(t *testing.T, d *loadtest.Downstream, acked map[string]string) int {
	t.Helper()
	dups := 0
	for id, arr := range d.Arrivals() {
		want, ok := acked[id]
		if !ok {
			continue
		}
		for _, a := range arr {
			if a.IdempotencyKey != want {
				t.Fatalf("%s arrived with Idempotency-Key %q, posted with %q", id, a.IdempotencyKey, want)
			}
		}
		dups += len(arr) - 1
	}
	return dups
}

// backlog fills the data directory with n orders while the target is
// paused (rate 0), stops sluice gracefully, and returns what was acknowledged.
func backlog(t *testing.T, dir, addr, url string, n int) map[string]string {
	t.Helper()
	p := startSluice(t, drainPolicy(t, dir, addr, url, "0"), addr)
	acked := fill(t, addr, 0, n)
	p.stop(t)
	if len(acked) != n {
		t.Fatalf("%d of %d orders acknowledged", len(acked), n)
	}
	return acked
}

// waitReceived waits until the downstream has received n requests in all.
func waitReceived(t *testing.T, ds *loadtest.Downstream, n uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for ds.Stats().Received < n {
		if time.Now().After(deadline) {
			t.Fatalf("the downstream received %d of %d in 30s", ds.Stats().Received, n)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// TestKill9DuringFullSpeedDrain: a backlog of 8000 orders drains at full
// speed (no rate limit, concurrency 64, fsync always) to a downstream that
// fails 2% of requests; sluice is killed with SIGKILL mid-drain three
// times. Every acknowledged order arrives; the copies sent again are
// bounded by what a kill can leave unrecorded (attempts in flight and
// outcomes waiting for their commit: concurrency + 1024 per kill), and
// each copy carries the order's own Idempotency-Key.
func TestKill9DuringFullSpeedDrain(t *testing.T) {
	ds := startDownstream(t, loadtest.DownstreamConfig{FailRate: 0.02, Seed: 7})
	dir := t.TempDir()
	addr := freePort(t)
	acked := backlog(t, dir, addr, ds.URL(), 8000)
	policy := drainPolicy(t, dir, addr, ds.URL(), "unlimited")
	const rounds = 3
	for round := range rounds {
		p := startSluice(t, policy, addr)
		waitReceived(t, ds, uint64(1500*(round+1)))
		p.kill(t)
		t.Logf("round %d: killed mid-drain; %d received", round, ds.Stats().Received)
	}
	p := startSluice(t, policy, addr)
	ids := slices.Collect(maps.Keys(acked))
	if err := loadtest.WaitDrained(context.Background(), ids, ds, 90*time.Second); err != nil {
		t.Fatalf("%d of %d acknowledged orders never arrived: %v\nlogs:\n%s", len(ds.Missing(ids)), len(ids), err, p.output())
	}
	dups := checkCopies(t, ds, acked)
	if bound := rounds * (64 + 1024); dups > bound {
		t.Fatalf("%d duplicate deliveries over %d kills; the bound is %d", dups, rounds, bound)
	}
	t.Logf("all %d acknowledged orders delivered; %d duplicates over %d kills", len(ids), dups, rounds)
}

// TestGracefulStopMidDrainSendsNothingTwice: SIGTERM while a backlog
// drains at full speed, then a restart: every order arrives exactly once.
func TestGracefulStopMidDrainSendsNothingTwice(t *testing.T) {
	ds := startDownstream(t, loadtest.DownstreamConfig{})
	dir := t.TempDir()
	addr := freePort(t)
	acked := backlog(t, dir, addr, ds.URL(), 6000)
	policy := drainPolicy(t, dir, addr, ds.URL(), "unlimited")
	p := startSluice(t, policy, addr)
	waitReceived(t, ds, 1500)
	p.stop(t)
	stoppedAt := ds.Stats().Received
	p = startSluice(t, policy, addr)
	ids := slices.Collect(maps.Keys(acked))
	if err := loadtest.WaitDrained(context.Background(), ids, ds, 60*time.Second); err != nil {
		t.Fatalf("%d of %d never arrived: %v", len(ds.Missing(ids)), len(ids), err)
	}
	if dups := checkCopies(t, ds, acked); dups != 0 {
		t.Fatalf("%d duplicate deliveries after a graceful stop", dups)
	}
	t.Logf("stopped after %d of %d; all delivered once", stoppedAt, len(acked))
}
