package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCtl drives a running node through 'sluice ctl': routes, pause,
// rate, resume, dead letters, reload; and a wrong token is an error.
func TestCtl(t *testing.T) {
	dir := t.TempDir()
	down := startCountingDown(t)
	down.failing.Store(true)
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, adminPolicy(dir, down.url, "unlimited", ""))
	tn := startTestNode(t, path)
	defer tn.n.stop(10 * time.Second)
	ctl := func(want int, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		code := run(append([]string{"ctl", "--admin", tn.admin, "--token", testToken}, args...), &out, &errb)
		if code != want {
			t.Fatalf("ctl %v: exit %d, want %d; stderr %s", args, code, want, errb.String())
		}
		return out.String() + errb.String()
	}
	postOrders(t, tn.base, 3, true)
	waitFor(5*time.Second, func() bool { return targetState(t, tn, "orders", "inv")["dead_letters"].(float64) == 3 })

	if out := ctl(0, "routes"); !strings.Contains(out, "orders") || !strings.Contains(out, "inv") {
		t.Errorf("routes: %s", out)
	}
	ctl(0, "pause", "orders", "inv", "--until", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if out := ctl(0, "routes"); !strings.Contains(out, "operator_pause until") {
		t.Errorf("routes after pause: %s", out)
	}
	ctl(0, "rate", "orders", "inv", "5/s")
	if st := targetState(t, tn, "orders", "inv"); st["operator_rate"] != "5/s" || st["paused"] != true {
		t.Errorf("state: %v", st)
	}
	ctl(0, "resume", "orders", "inv")
	ctl(0, "rate", "orders", "inv", "policy")
	if out := ctl(0, "dead", "list", "orders", "inv", "--class", "5xx"); strings.Count(out, "status 500") != 3 {
		t.Errorf("dead list: %s", out)
	}
	down.failing.Store(false)
	if out := ctl(0, "dead", "replay", "orders", "inv", "--status", "500", "--rate", "unlimited"); !strings.Contains(out, "replayed 3") {
		t.Errorf("dead replay: %s", out)
	}
	if !waitFor(5*time.Second, func() bool { return len(down.delivered()) == 3 }) {
		t.Errorf("replayed letters not delivered: %d", len(down.delivered()))
	}
	// Counts, and a replay by filter of what was delivered: two new
	// orders, the window starting just before them.
	from := time.Now().UTC().Format(time.RFC3339Nano)
	fresh := postOrders(t, tn.base, 2, false)
	waitFor(5*time.Second, func() bool { return down.delivered()[fresh[0]] == 1 && down.delivered()[fresh[1]] == 1 })
	if out := ctl(0, "counts", "orders"); !regexp.MustCompile(`(?m)^inv\s+5\s`).MatchString(out) {
		t.Errorf("counts: %s", out)
	}
	if !waitFor(5*time.Second, func() bool {
		return strings.Contains(ctl(0, "replay", "orders", "inv", "--state", "delivered", "--since", from, "--rate", "unlimited"), "replayed 2")
	}) {
		t.Errorf("replay: %s", ctl(0, "replay", "orders", "inv", "--state", "delivered", "--since", from))
	}
	if !waitFor(5*time.Second, func() bool { return down.delivered()[fresh[0]] == 2 && down.delivered()[fresh[1]] == 2 }) {
		t.Errorf("replayed messages not delivered again: %v", down.delivered())
	}
	if out := ctl(2, "replay", "orders", "inv", "--state", "queued"); !strings.Contains(out, "--state delivered or --state dead") {
		t.Errorf("replay usage: %s", out)
	}
	if out := ctl(0, "reload"); !strings.Contains(out, "reloaded: 0 changes") {
		t.Errorf("reload: %s", out)
	}
	if out := ctl(1, "rate", "orders", "inv", "fast"); !strings.Contains(out, "invalid rate") {
		t.Errorf("bad rate: %s", out)
	}
	if out := ctl(2, "pause", "orders"); !strings.Contains(out, "expected ROUTE TARGET") {
		t.Errorf("usage: %s", out)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"ctl", "--admin", tn.admin, "--token", "wrong-token-0123456789", "routes"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "401") {
		t.Errorf("wrong token: exit %d, %s", code, errb.String())
	}
}

// TestCtlReplayErrors: a replay answered 500 with its result's errors
// prints them, not only the status.
func TestCtlReplayErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(500)
		w.Write([]byte(`{"replayed":3,"errors":["seq 7: disk on fire"],"done":false}`))
	}))
	defer srv.Close()
	c := &ctlClient{base: srv.URL, http: srv.Client()}
	var out bytes.Buffer
	err := c.run([]string{"replay", "orders", "inv", "--state", "dead"}, &out)
	if err == nil || !strings.Contains(err.Error(), "seq 7: disk on fire") || !strings.Contains(err.Error(), "500") {
		t.Fatalf("replay answered 500 with errors: %v", err)
	}
}
