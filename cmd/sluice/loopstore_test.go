package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKill9LoopStoredKeepsAcknowledged: requests to a buffer route are
// stored by the event loops (a batch of a turn, one AppendDrafts a batch);
// sluice is killed with SIGKILL while 32 keep-alive clients write, with
// answers and commits in flight; restarted, every request that was
// answered 202 is stored under its id, and a repeat of its key gets that
// id back as a duplicate.
func TestKill9LoopStoredKeepsAcknowledged(t *testing.T) {
	dir := t.TempDir()
	addr, adminAddr := freePort(t), freePort(t)
	policy := filepath.Join(dir, "policy.yaml")
	writeFile(t, policy, fmt.Sprintf(`listen: %q
admin: { listen: %q, token: %q }
server: { event_loops: 2 }
storage: { dir: %q, fsync: always, segment_bytes: 256KiB }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    idempotency_header: Idempotency-Key
    targets:
      - { name: paused, url: "http://127.0.0.1:9", rate: 0 }
`, addr, adminAddr, testToken, filepath.Join(dir, "data")))
	p := startSluice(t, policy, addr)
	handed := value(scrape(t, "http://"+adminAddr), "sluice_event_loop_handed_over_total") // the start-up probe's

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	body := func(key string) string { return `{"key":"` + key + `","pad":"` + strings.Repeat("p", 200) + `"}` }
	post := func(key string) (*http.Response, error) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/api/orders", strings.NewReader(body(key)))
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Content-Type", "application/json")
		return client.Do(req)
	}
	var mu sync.Mutex
	acked := map[string]string{} // key -> id of its 202
	var sent int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 32 {
		wg.Go(func() {
			for j := 0; j < 100000; j++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("c%d-%d", c, j)
				mu.Lock()
				sent++
				mu.Unlock()
				resp, err := post(key)
				if err != nil {
					return // killed: no answer, no promise
				}
				var b struct{ ID string }
				err = json.NewDecoder(resp.Body).Decode(&b)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					continue
				}
				if err != nil || b.ID == "" || b.ID != resp.Header.Get("X-Sluice-Id") {
					t.Errorf("bad 202 for %s: %v id %q header %q", key, err, b.ID, resp.Header.Get("X-Sluice-Id"))
					return
				}
				mu.Lock()
				acked[key] = b.ID
				mu.Unlock()
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	deadline := time.Now().Add(30 * time.Second)
	for count() < 1500 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	acks := count() // before the scrape: each was answered by a loop that counted it first
	fams := scrape(t, "http://"+adminAddr)
	if got := value(fams, "sluice_event_loop_handed_over_total"); got != handed {
		t.Errorf("%v connections handed over during the burst: the loops did not store the requests themselves", got-handed)
	}
	if got := value(fams, "sluice_event_loop_requests_total", "how", "stored"); got < float64(acks) {
		t.Errorf("sluice_event_loop_requests_total{how=stored} = %v after %d acknowledged", got, acks)
	}
	p.kill(t)
	close(stop)
	wg.Wait()
	mu.Lock()
	t.Logf("killed with %d of %d requests acknowledged", len(acked), sent)
	mu.Unlock()
	if count() < 1500 {
		t.Fatalf("only %d acknowledged in 30s; logs:\n%s", count(), p.output())
	}

	p = startSluice(t, policy, addr)
	defer p.stop(t)
	for key, id := range acked {
		resp, err := http.Get("http://" + addr + "/_sluice/v1/messages/" + id)
		if err != nil {
			t.Fatal(err)
		}
		var st struct{ ID, Route string }
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil || st.ID != id || st.Route != "orders" {
			t.Fatalf("acknowledged %s (%s) after the restart: status %d %+v %v", key, id, resp.StatusCode, st, err)
		}
		resp, err = post(key)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 202 || resp.Header.Get("X-Sluice-Id") != id || resp.Header.Get("X-Sluice-Duplicate") != "true" {
			t.Fatalf("repeat of acknowledged %s after the restart: %d id %q (want %s) duplicate %q",
				key, resp.StatusCode, resp.Header.Get("X-Sluice-Id"), id, resp.Header.Get("X-Sluice-Duplicate"))
		}
	}
}
