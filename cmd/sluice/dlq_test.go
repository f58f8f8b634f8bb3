package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Dead letters end to end: a downstream that rejects (422, never retried)
// makes every order dead; offline, `sluice dlq list` shows them and
// `replay --all` puts them back; once the downstream accepts and sluice runs
// again, every one is delivered.
func TestDeadLettersReplayEndToEnd(t *testing.T) {
	var accept atomic.Bool
	var mu sync.Mutex
	got := map[string]int{}
	ds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !accept.Load() {
			w.WriteHeader(422)
			return
		}
		mu.Lock()
		got[r.Header.Get("X-Sluice-Id")]++
		mu.Unlock()
	}))
	defer ds.Close()
	dir := t.TempDir()
	addr := freePort(t)
	policy := writePolicy(t, dir, addr, ds.URL, ds.URL)
	p := startSluice(t, policy, addr)

	var ids []string
	for range 3 {
		resp, err := http.Post("http://"+addr+"/api/orders", "application/json", strings.NewReader(`{"x":1}`))
		if err != nil || resp.StatusCode != 202 {
			t.Fatalf("post: %v %v", err, resp)
		}
		resp.Body.Close()
		ids = append(ids, resp.Header.Get("X-Sluice-Id"))
	}
	// Wait until every order is dead for both targets.
	deadline := time.Now().Add(20 * time.Second)
	for _, id := range ids {
		for {
			resp, err := http.Get("http://" + addr + "/_sluice/v1/messages/" + id)
			if err != nil {
				t.Fatal(err)
			}
			var st struct{ Targets []struct{ Status string } }
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if len(st.Targets) == 2 && st.Targets[0].Status == "dead" && st.Targets[1].Status == "dead" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not dead: %+v", id, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	p.stop(t)

	out, err := exec.Command(sluiceBin, "dlq", "list", "--policy", policy, "--target", "inventory").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 dead letters") || !strings.Contains(string(out), ids[0]) {
		t.Fatalf("dlq list: %v\n%s", err, out)
	}
	out, err = exec.Command(sluiceBin, "dlq", "show", "--policy", policy, "--id", ids[1]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status": 422`) || !strings.Contains(string(out), `{\"x\":1}`) {
		t.Fatalf("dlq show: %v\n%s", err, out)
	}
	out, err = exec.Command(sluiceBin, "dlq", "replay", "--policy", policy, "--route", "orders", "--target", "inventory", "--all", "--rate", "100/s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "replaying 3") {
		t.Fatalf("dlq replay: %v\n%s", err, out)
	}
	out, err = exec.Command(sluiceBin, "dlq", "purge", "--policy", policy, "--route", "orders", "--target", "delivery", "--id", ids[2]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "purged 1") {
		t.Fatalf("dlq purge: %v\n%s", err, out)
	}

	accept.Store(true)
	startSluice(t, policy, addr)
	deadline = time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if got[id] != 1 {
			t.Errorf("replayed %s delivered %d times, want 1 (got %v)", id, got[id], got)
		}
	}
}
