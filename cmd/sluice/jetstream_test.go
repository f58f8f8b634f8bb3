package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/loadtest"
)

// TestJetStreamKill9LosesNothing: `sluice serve` with storage.engine
// jetstream and no urls (the embedded server in storage.dir) answers 202
// only once the stream has the order; killed with SIGKILL in mid-stream and
// restarted, it delivers every acknowledged order to the target; a repeated
// idempotency key answers the first id; the status API says delivered.
func TestJetStreamKill9LosesNothing(t *testing.T) {
	inv := startDownstream(t, loadtest.DownstreamConfig{FailRate: 0.05, Seed: 2})
	dir := t.TempDir()
	addr := freePort(t)
	policy := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policy, []byte(fmt.Sprintf(`listen: %q
storage:
  engine: jetstream
  dir: %q
  jetstream: { lease_ttl: 2s }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    idempotency_header: Idempotency-Key
    targets:
      - name: inventory
        url: %s
        rate: 500/s
        burst: 50
        concurrency: 8
        retry: { max_attempts: 50, initial: 50ms, max: 500ms }
`, addr, filepath.Join(dir, "data"), inv.URL())), 0o644)

	var mu sync.Mutex
	var acked []string
	client := &http.Client{Timeout: 5 * time.Second}
	post := func(key string) (string, int) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/api/orders", strings.NewReader(`{"order":"`+key+`"}`))
		req.Header.Set("Idempotency-Key", key)
		resp, err := client.Do(req)
		if err != nil {
			return "", 0
		}
		defer resp.Body.Close()
		var b struct{ ID string }
		json.NewDecoder(resp.Body).Decode(&b)
		return b.ID, resp.StatusCode
	}
	seq := 0
	for round := range 2 {
		p := startSluice(t, policy, addr)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					mu.Lock()
					seq++
					key := fmt.Sprintf("order-%d", seq)
					mu.Unlock()
					if id, code := post(key); code == http.StatusAccepted && id != "" {
						mu.Lock()
						acked = append(acked, id)
						mu.Unlock()
					}
				}
			})
		}
		want := 300 * (round + 1)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n >= want {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		close(stop)
		wg.Wait()
		if len(acked) < want {
			t.Fatalf("round %d: %d acknowledged in 30s; logs:\n%s", round, len(acked), p.output())
		}
		t.Logf("round %d: killed with %d acknowledged, %d delivered", round, len(acked), len(inv.Deliveries()))
	}
	p := startSluice(t, policy, addr)
	if err := loadtest.WaitDrained(context.Background(), acked, inv, 60*time.Second); err != nil {
		t.Fatalf("%d of %d acknowledged orders never arrived: %v\nlogs:\n%s", len(inv.Missing(acked)), len(acked), err, p.output())
	}
	dups := 0
	for _, n := range inv.Deliveries() {
		dups += n - 1
	}
	t.Logf("all %d acknowledged orders delivered; %d duplicate deliveries (in flight at the kills)", len(acked), dups)
	// Each kill may repeat what the node had handed out and not recorded:
	// at most the consumer's MaxAckPending (max(64, 4 x concurrency 8)).
	if dups > 2*64 {
		t.Errorf("%d duplicates after 2 kills; at most %d expected", dups, 2*64)
	}

	// The same key again: the first id, nothing new stored.
	first, code := post("order-1")
	again, code2 := post("order-1")
	if code != http.StatusAccepted || code2 != http.StatusAccepted || first == "" || first != again {
		t.Fatalf("a repeated key: %d %q then %d %q", code, first, code2, again)
	}
	resp, err := http.Get("http://" + addr + "/_sluice/v1/messages/" + acked[0])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"delivered"`) {
		t.Fatalf("status of %s: %d %s", acked[0], resp.StatusCode, body)
	}
	// Offline tools refuse the engine clearly.
	out, err := exec.Command(sluiceBin, "inspect", "--data", filepath.Join(dir, "data")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "JetStream") {
		t.Fatalf("inspect on a JetStream directory: %v\n%s", err, out)
	}
	out, err = exec.Command(sluiceBin, "dlq", "list", "--policy", policy).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "storage.engine is jetstream") {
		t.Fatalf("dlq with engine jetstream: %v\n%s", err, out)
	}
}

// TestJetStreamCheckRefusesOrdering: `sluice check` names the file and line
// of an ordering (on a cluster) and a fairness that engine jetstream cannot
// honour, and says where a good policy's queues live.
func TestJetStreamCheckRefusesOrdering(t *testing.T) {
	p := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(p, []byte("storage:\n  engine: jetstream\n  jetstream: { urls: [nats://127.0.0.1:4222] }\nroutes:\n  - name: orders\n    match: { path: /api/orders }\n    targets:\n      - name: inv\n        url: http://127.0.0.1:1\n        ordering: { key: \"header:X-Customer\" }\n      - name: bill\n        url: http://127.0.0.1:2\n        fairness: { key: \"header:X-Tenant\" }\n"), 0o644)
	out, err := exec.Command(sluiceBin, "check", "--policy", p).CombinedOutput()
	if err == nil || !strings.Contains(string(out), p+":10: routes[0].targets[0].ordering") || !strings.Contains(string(out), p+":13: routes[0].targets[1].fairness") {
		t.Fatalf("check of ordering on a cluster and fairness with jetstream: %v\n%s", err, out)
	}
	good := filepath.Join(t.TempDir(), "good.yaml")
	os.WriteFile(good, []byte("storage:\n  engine: jetstream\n  jetstream: { urls: [nats://127.0.0.1:4222, nats://127.0.0.1:4223, nats://127.0.0.1:4224], replicas: 3 }\nroutes:\n  - name: orders\n    match: { path: /api/orders }\n    targets: [{ name: inv, url: \"http://127.0.0.1:1\" }]\n"), 0o644)
	out, err = exec.Command(sluiceBin, "check", "--policy", good).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "storage jetstream on 3 servers, replicas 3") {
		t.Fatalf("check of a jetstream cluster policy: %v\n%s", err, out)
	}
}
