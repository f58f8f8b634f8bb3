package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/sluice-proxy/sluice/loadtest"
)

// TestJetStreamReplayHolderKilled: two sluice processes on one NATS server.
// Every order is delivered; then an operator replays the delivered ones on
// the node that does not drain the target, spread at 40/s, and the node
// that drains it (the lease holder) is killed with SIGKILL while the
// replays are coming due. The surviving node takes the lease and delivers
// every replayed order again: none is missed, repeats stay within what the
// killed node had handed out, and its counts end with every order
// delivered and none pending.
func TestJetStreamReplayHolderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("a NATS server and two sluice processes")
	}
	dir := t.TempDir()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(dir, "nats"),
		SyncAlways: true, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(30 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port)
	ds, err := loadtest.StartDownstream(loadtest.DownstreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	addrs, admins, dirs := make([]string, 2), make([]string, 2), make([]string, 2)
	procs := make([]*proc, 2)
	for i := range 2 {
		addrs[i], admins[i] = freePort(t), freePort(t)
		dirs[i] = filepath.Join(dir, fmt.Sprintf("node%d", i))
		policy := filepath.Join(dir, fmt.Sprintf("node%d.yaml", i))
		os.WriteFile(policy, []byte(fmt.Sprintf(`listen: %q
admin: { listen: %q, token: %q }
storage:
  engine: jetstream
  dir: %q
  jetstream: { urls: [%s], lease_ttl: 2s }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    targets:
      - { name: inventory, url: %s, rate: 200/s, concurrency: 4, retry: { max_attempts: 100, initial: 50ms, max: 500ms } }
`, addrs[i], admins[i], testToken, dirs[i], url, ds.URL())), 0o644)
		procs[i] = startSluice(t, policy, addrs[i])
	}
	const n = 120
	ids := postOrders(t, "http://"+addrs[0], n, false)
	if len(ids) != n {
		t.Fatalf("%d of %d orders acknowledged", len(ids), n)
	}
	once := func() bool {
		got := ds.Deliveries()
		for _, id := range ids {
			if got[id] < 1 {
				return false
			}
		}
		return true
	}
	if !waitFor(20*time.Second, once) {
		t.Fatalf("%d of %d delivered", len(ds.Deliveries()), n)
	}
	holder := leaseHolder(t, []string{url}, dirs)
	other := 1 - holder
	if !waitFor(10*time.Second, func() bool {
		return countsOf(t, "http://"+admins[other], "orders", "inventory", "")["delivered"] == float64(n)
	}) {
		t.Fatalf("counts before the replay: %v", countsOf(t, "http://"+admins[other], "orders", "inventory", ""))
	}
	before := ds.Deliveries()

	// 120 replays at 40/s come due over 3s; the holder dies a second in.
	code, body := apiCall(t, "POST", "http://"+admins[other]+"/v1/routes/orders/targets/inventory/replay", testToken,
		map[string]any{"state": "delivered", "rate": "40/s"})
	if code != 200 || body["replayed"] != float64(n) {
		t.Fatalf("replay on node %d: %d %v", other, code, body)
	}
	time.Sleep(time.Second)
	procs[holder].cmd.Process.Signal(syscall.SIGKILL)
	procs[holder].cmd.Wait()
	t.Logf("node %d (the holder) killed with %d replays delivered", holder, replays(ds.Deliveries(), before))

	again := func() bool {
		got := ds.Deliveries()
		for _, id := range ids {
			if got[id] < before[id]+1 {
				return false
			}
		}
		return true
	}
	if !waitFor(30*time.Second, again) {
		t.Fatalf("%d of %d replays delivered 30s after the kill\n%s", replays(ds.Deliveries(), before), n, procs[other].output())
	}
	var c map[string]any
	if !waitFor(10*time.Second, func() bool {
		c = countsOf(t, "http://"+admins[other], "orders", "inventory", "")
		return c["pending"] == 0.0
	}) {
		t.Fatalf("counts after the replays: %v", c)
	}
	identity(t, c)
	if c["accepted"] != float64(n) || c["delivered"] != float64(n) {
		t.Fatalf("counts after the replays: %v, want %d accepted and delivered", c, n)
	}
	extra := 0
	got := ds.Deliveries()
	for _, id := range ids {
		extra += got[id] - before[id] - 1
	}
	// Repeats: what the killed node had handed out and not recorded
	// (MaxAckPending: 64 here), and replays it had taken from the schedule.
	if extra > 64 {
		t.Fatalf("%d repeated deliveries of replays; the killed node held at most 64", extra)
	}
	t.Logf("every replay delivered; %d repeated", extra)
	if out := procs[other].output(); strings.Contains(out, "panic") {
		t.Fatalf("the surviving node panicked:\n%s", out)
	}
}

// replays counts the deliveries in got beyond those in before.
func replays(got, before map[string]int) int {
	k := 0
	for id, v := range got {
		k += v - before[id]
	}
	return k
}
