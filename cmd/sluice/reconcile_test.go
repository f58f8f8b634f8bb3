package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestReconcile: reconcile agrees with a downstream's complete list (exit
// 0), finds the id the test removed from it and an id it never delivered
// (exit 1), against the running server and offline, from a file and a URL.
func TestReconcile(t *testing.T) {
	for _, engine := range []string{"bbolt", "jetstream"} {
		t.Run(engine, func(t *testing.T) { testReconcile(t, engine) })
	}
}

func testReconcile(t *testing.T, engine string) {
	dir := t.TempDir()
	down := startCountingDown(t)
	path := filepath.Join(dir, "policy.yaml")
	pol := adminPolicy(dir, down.url, "unlimited", "")
	if engine != "bbolt" {
		pol = strings.Replace(pol, "storage: { dir:", "storage: { engine: "+engine+", dir:", 1)
	}
	writeFile(t, path, pol)
	tn := startTestNode(t, path)
	stopped := false
	defer func() {
		if !stopped {
			tn.n.stop(10 * time.Second)
		}
	}()
	ids := postOrders(t, tn.base, 30, false)
	if !waitFor(10*time.Second, func() bool { return len(down.delivered()) == 30 }) {
		t.Fatalf("delivered %d of 30", len(down.delivered()))
	}
	// The downstream got them; sluice has recorded them delivered.
	if !waitFor(10*time.Second, func() bool { return countsOf(t, tn.admin, "orders", "inv", "")["delivered"] == 30.0 }) {
		t.Fatalf("counts: %v", countsOf(t, tn.admin, "orders", "inv", ""))
	}
	got := down.delivered()
	var list []string
	for id := range got {
		list = append(list, id)
	}
	sort.Strings(list)
	full := filepath.Join(dir, "full.txt")
	writeFile(t, full, strings.Join(list, "\n")+"\n")
	removed := ids[17]
	var short []string
	for _, id := range list {
		if id != removed {
			short = append(short, fmt.Sprintf(`{"id":%q}`, id)) // NDJSON this time
		}
	}
	shortPath := filepath.Join(dir, "short.ndjson")
	writeFile(t, shortPath, strings.Join(short, "\n")+"\n")
	extraPath := filepath.Join(dir, "extra.txt")
	writeFile(t, extraPath, strings.Join(list, "\n")+"\n0000000000000zzzzzzzzzzzzz\n")
	// The list served over HTTP, as a downstream could.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, shortPath)
	}))
	defer srv.Close()

	run := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := run(append([]string{"reconcile", "--route", "orders", "--target", "inv"}, args...), &out, &errb)
		return code, out.String() + errb.String()
	}
	check := func(where []string) {
		t.Helper()
		if code, out := run(append(where, "--received", full)...); code != 0 || !strings.Contains(out, "delivered 30, received 30, missing 0, extra 0") {
			t.Fatalf("the complete list: exit %d\n%s", code, out)
		}
		for _, src := range []string{shortPath, srv.URL} {
			code, out := run(append(where, "--received", src)...)
			if code != 1 || !strings.Contains(out, "missing\t"+removed) || !strings.Contains(out, "missing 1, extra 0") {
				t.Fatalf("the list without %s (%s): exit %d\n%s", removed, src, code, out)
			}
		}
		code, out := run(append(where, "--received", extraPath)...)
		if code != 1 || !strings.Contains(out, "extra\tid=0000000000000zzzzzzzzzzzzz") || !strings.Contains(out, "missing 0, extra 1") {
			t.Fatalf("a list with an extra id: exit %d\n%s", code, out)
		}
		// A window before anything was accepted: everything received is extra.
		code, out = run(append(where, "--received", full, "--until", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339))...)
		if code != 1 || !strings.Contains(out, "delivered 0, received 30, missing 0, extra 30") {
			t.Fatalf("an empty window: exit %d\n%s", code, out)
		}
	}
	check([]string{"--admin", tn.admin, "--token", testToken})
	if code, out := run("--admin", tn.admin, "--token", "wrong-token-0123456789", "--received", full); code != 2 || !strings.Contains(out, "401") {
		t.Fatalf("a wrong token: exit %d\n%s", code, out)
	}
	if code, out := run("--received", full, "--since", "yesterday"); code != 2 || !strings.Contains(out, "--since") {
		t.Fatalf("a bad --since: exit %d\n%s", code, out)
	}

	// Offline, with the server stopped.
	tn.n.stop(10 * time.Second)
	stopped = true
	if engine == "jetstream" {
		if code, out := run("--data", filepath.Join(dir, "data"), "--received", full); code != 2 || !strings.Contains(out, "--admin") {
			t.Fatalf("offline on a JetStream directory: exit %d\n%s", code, out)
		}
		return
	}
	check([]string{"--data", filepath.Join(dir, "data")})
	if _, err := os.Stat(filepath.Join(dir, "data", "queues", "orders")); err != nil {
		t.Fatal(err)
	}
}

// TestReconcileBadWindow: a window whose --until is not after --since is
// refused with exit 2 and the flags named, before anything is read.
func TestReconcileBadWindow(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"reconcile", "--route", "orders", "--target", "inv", "--received", filepath.Join(t.TempDir(), "absent"),
		"--since", "2026-12-05T02:00:00Z", "--until", "2026-12-05T01:00:00Z"}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "--until must be after --since") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

// An export's error line is an object since the admin API has one error
// shape; a server from before wrote a string. Both give their message.
func TestExportErrorBothShapes(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{`{"code":"internal","message":"disk gone"}`, "disk gone (internal)"},
		{`"disk gone"`, "disk gone"},
		{`{}`, "no message"},
		{`42`, "no message"},
	} {
		if got := exportError(json.RawMessage(c.raw)); got != c.want {
			t.Errorf("exportError(%s) = %q, want %q", c.raw, got, c.want)
		}
	}
}
