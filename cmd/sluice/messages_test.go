package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// getRaw GETs url with the admin token and returns the status and body.
func getLines(t *testing.T, u string) (int, []map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []map[string]any
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("a line that is not JSON: %q", sc.Text())
		}
		out = append(out, m)
	}
	return resp.StatusCode, out
}

func countsOf(t *testing.T, admin, route, target, query string) map[string]any {
	t.Helper()
	code, body := apiCall(t, "GET", admin+"/v1/routes/"+route+"/counts"+query, testToken, nil)
	if code != 200 {
		t.Fatalf("counts: %d %v", code, body)
	}
	for _, x := range body["targets"].([]any) {
		if x := x.(map[string]any); x["target"] == target {
			return x
		}
	}
	t.Fatalf("no target %q in %v", target, body)
	return nil
}

// identity checks accepted = delivered + dead + expired + purged + pending
// and pending = queued + in_flight + retrying + parked in one target's counts.
func identity(t *testing.T, c map[string]any) {
	t.Helper()
	n := func(k string) float64 { v, _ := c[k].(float64); return v }
	if n("accepted") != n("delivered")+n("dead")+n("expired")+n("purged")+n("pending") ||
		n("pending") != n("queued")+n("in_flight")+n("retrying")+n("parked") {
		t.Fatalf("the counts do not add up: %v", c)
	}
}

// TestAdminMessagesCountsReplay: the message list (JSON pages and NDJSON),
// the counts, the metrics and a replay by filter, against a running node,
// on each storage engine (jetstream: its embedded server).
func TestAdminMessagesCountsReplay(t *testing.T) {
	for _, engine := range []string{"bbolt", "jetstream"} {
		t.Run(engine, func(t *testing.T) { testAdminMessagesCountsReplay(t, engine) })
	}
}

// onEngine is a policy edit (for startAdminNode) that sets storage.engine;
// nil for bbolt, the default.
func onEngine(engine string) func(pol string) string {
	if engine == "bbolt" {
		return nil
	}
	return func(pol string) string {
		return strings.Replace(pol, "storage: { dir:", "storage: { engine: "+engine+", dir:", 1)
	}
}

func testAdminMessagesCountsReplay(t *testing.T, engine string) {
	tn, down := startAdminNode(t, "unlimited", onEngine(engine))
	down.failing.Store(true)
	defer tn.n.stop(10 * time.Second)

	ok := postOrders(t, tn.base, 20, false)
	bad := postOrders(t, tn.base, 5, true) // answered 500 once: dead (max_attempts 1)
	if !waitFor(10*time.Second, func() bool {
		c := countsOf(t, tn.admin, "orders", "inv", "")
		return c["delivered"] == 20.0 && c["dead"] == 5.0
	}) {
		t.Fatalf("counts: %v", countsOf(t, tn.admin, "orders", "inv", ""))
	}
	c := countsOf(t, tn.admin, "orders", "inv", "")
	identity(t, c)
	if c["accepted"] != 25.0 || c["pending"] != 0.0 {
		t.Fatalf("counts: %v", c)
	}
	// A window that ends before anything was accepted counts nothing.
	if c := countsOf(t, tn.admin, "orders", "inv", "?until="+url.QueryEscape(time.Now().Add(-time.Hour).Format(time.RFC3339))); c["accepted"] != 0.0 {
		t.Fatalf("counts an hour back: %v", c)
	}

	// The dead ones, by filter.
	code, body := apiCall(t, "GET", tn.admin+"/v1/routes/orders/messages?target=inv&state=dead&status=500", testToken, nil)
	if code != 200 {
		t.Fatalf("list: %d %v", code, body)
	}
	var dead []string
	for _, m := range body["messages"].([]any) {
		m := m.(map[string]any)
		dead = append(dead, m["id"].(string))
		tg := m["targets"].([]any)[0].(map[string]any)
		if tg["state"] != "dead" || tg["status_code"] != 500.0 || tg["dead_at"] == nil || tg["attempts"] != 1.0 {
			t.Fatalf("a dead row: %v", m)
		}
	}
	if !slices.Equal(dead, bad) || body["next"] != nil {
		t.Fatalf("dead listed %v (next %v), want %v", dead, body["next"], bad)
	}
	// Every message, seven a page.
	var all []string
	next := ""
	for range 10 {
		u := tn.admin + "/v1/routes/orders/messages?limit=7"
		if next != "" {
			u += "&cursor=" + next
		}
		code, body := apiCall(t, "GET", u, testToken, nil)
		if code != 200 {
			t.Fatalf("page: %d %v", code, body)
		}
		for _, m := range body["messages"].([]any) {
			all = append(all, m.(map[string]any)["id"].(string))
		}
		n, _ := body["next"].(string)
		if n == "" {
			break
		}
		next = n
	}
	if want := append(slices.Clone(ok), bad...); !slices.Equal(all, want) {
		t.Fatalf("pages listed %d ids, want the %d accepted in order", len(all), len(want))
	}
	// NDJSON: every row, then the end line.
	code, lines := getLines(t, tn.admin+"/v1/routes/orders/messages?format=ndjson&target=inv")
	if code != 200 || len(lines) != 26 || lines[25]["end"] != true || lines[25]["rows"] != 25.0 || lines[0]["id"] != ok[0] {
		t.Fatalf("ndjson: %d, %d lines, last %v", code, len(lines), lines[len(lines)-1])
	}

	// Bad filters: 400 naming the parameter; no token: 401.
	for q, param := range map[string]string{
		"state=bogus": "state", "since=yesterday": "since", "until=2026-13-01": "until", "status=abc": "status",
		"cursor=zz": "cursor", "limit=0": "limit", "format=xml": "format", "colour=red": "query",
		"since=2026-12-05T02:00:00Z&until=2026-12-05T01:00:00Z": "until", "target=nobody": "target",
	} {
		code, body := apiCall(t, "GET", tn.admin+"/v1/routes/orders/messages?"+q, testToken, nil)
		e, _ := body["error"].(map[string]any)
		if code != 400 || e["param"] != param {
			t.Errorf("?%s: %d %v, want 400 naming %s", q, code, body, param)
		}
	}
	for q, param := range map[string]string{
		"since=yesterday": "since", "until=2026-13-01": "until", "state=queued": "query",
		"since=2026-12-05T02:00:00Z&until=2026-12-05T01:00:00Z": "until",
	} {
		code, body := apiCall(t, "GET", tn.admin+"/v1/routes/orders/counts?"+q, testToken, nil)
		e, _ := body["error"].(map[string]any)
		if code != 400 || e["param"] != param {
			t.Errorf("counts?%s: %d %v, want 400 naming %s", q, code, body, param)
		}
	}
	if code, _ := apiCall(t, "GET", tn.admin+"/v1/routes/orders/counts", "", nil); code != 401 {
		t.Fatalf("counts without the token: %d", code)
	}
	if code, _ := apiCall(t, "GET", tn.admin+"/v1/routes/orders/messages", "wrong-token-0123456789", nil); code != 401 {
		t.Fatalf("messages with a wrong token: %d", code)
	}
	if code, _ := apiCall(t, "GET", tn.admin+"/v1/routes/nope/counts", testToken, nil); code != 404 {
		t.Fatalf("counts of an unknown route: %d", code)
	}

	// The metrics show the same counts.
	var fams map[string]*dtoFamily
	waitFor(5*time.Second, func() bool {
		fams = scrape(t, tn.admin)
		return value(fams, "sluice_target_accepted_messages", "route", "orders", "target", "inv") == 25
	})
	if v := value(fams, "sluice_target_accepted_messages", "route", "orders", "target", "inv"); v != 25 {
		t.Fatalf("sluice_target_accepted_messages = %v", v)
	}
	sum := 0.0
	for _, st := range []string{"delivered", "dead", "expired", "purged", "queued", "in_flight", "retrying", "parked"} {
		sum += value(fams, "sluice_target_messages", "route", "orders", "target", "inv", "state", st)
	}
	if sum != 25 || value(fams, "sluice_target_messages", "route", "orders", "target", "inv", "state", "dead") != 5 {
		t.Fatalf("sluice_target_messages sums to %v", sum)
	}

	// Replay by filter: the dead ones, now that the downstream is well.
	down.failing.Store(false)
	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/replay", testToken, map[string]any{"state": "bogus"}); code != 400 {
		t.Fatalf("replay of state bogus: %d %v", code, body)
	}
	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/nobody/replay", testToken, map[string]any{"state": "dead"}); code != 404 {
		t.Fatalf("replay of an unknown target: %d %v", code, body)
	}
	code, body = apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/replay", testToken, map[string]any{"state": "dead", "rate": "unlimited"})
	if code != 200 || body["replayed"] != 5.0 || body["done"] != true {
		t.Fatalf("replay: %d %v", code, body)
	}
	if !waitFor(10*time.Second, func() bool { return countsOf(t, tn.admin, "orders", "inv", "")["delivered"] == 25.0 }) {
		t.Fatalf("after the replay: %v", countsOf(t, tn.admin, "orders", "inv", ""))
	}
	got := down.delivered()
	for _, id := range append(slices.Clone(ok), bad...) {
		if got[id] != 1 {
			t.Fatalf("message %s delivered %d times", id, got[id])
		}
	}
	// A replay of what was delivered sends each once more.
	code, body = apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/replay", testToken, map[string]any{"state": "delivered", "rate": "unlimited"})
	if code != 200 || body["replayed"] != 25.0 {
		t.Fatalf("replay of the delivered: %d %v", code, body)
	}
	if !waitFor(10*time.Second, func() bool {
		got := down.delivered()
		for _, id := range ok {
			if got[id] != 2 {
				return false
			}
		}
		return countsOf(t, tn.admin, "orders", "inv", "")["delivered"] == 25.0
	}) {
		t.Fatalf("after replaying the delivered: %v", countsOf(t, tn.admin, "orders", "inv", ""))
	}
	identity(t, countsOf(t, tn.admin, "orders", "inv", ""))
}

// TestSpilloverRemembersForwarded: a spillover request forwarded at once is
// remembered by its idempotency key (a repeat is answered with the first
// id and not forwarded again, also after a restart) and counted as
// delivered.
func TestSpilloverRemembersForwarded(t *testing.T) {
	tn, down := startAdminNode(t, "unlimited", func(pol string) string {
		return strings.Replace(pol, "    match: { path: /api/orders }",
			"    match: { path: /api/orders }\n    mode: spillover\n    idempotency_header: Idempotency-Key", 1)
	})
	post := func(key string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", tn.base+"/api/orders", strings.NewReader(`{"k":"`+key+`"}`))
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	first := post("k-1")
	id := first.Header.Get("X-Sluice-Id")
	if first.StatusCode != 200 || first.Header.Get("X-Sluice-Mode") != "forwarded" || id == "" {
		t.Fatalf("first: %d %v", first.StatusCode, first.Header)
	}
	for range 2 {
		again := post("k-1")
		if again.StatusCode != 202 || again.Header.Get("X-Sluice-Id") != id || again.Header.Get("X-Sluice-Duplicate") != "true" {
			t.Fatalf("a repeat: %d %v", again.StatusCode, again.Header)
		}
	}
	total := func() int {
		n := 0
		for _, v := range down.delivered() {
			n += v
		}
		return n
	}
	if n := total(); n != 1 {
		t.Fatalf("the downstream got %d requests, want 1", n)
	}
	if !waitFor(5*time.Second, func() bool { return countsOf(t, tn.admin, "orders", "inv", "")["delivered"] == 1.0 }) {
		t.Fatalf("counts: %v", countsOf(t, tn.admin, "orders", "inv", ""))
	}
	c := countsOf(t, tn.admin, "orders", "inv", "")
	identity(t, c)
	if c["accepted"] != 1.0 {
		t.Fatalf("counts: %v", c)
	}
	tn.n.stop(10 * time.Second)
	tn = startTestNode(t, tn.path)
	defer tn.n.stop(10 * time.Second)
	if again := post("k-1"); again.StatusCode != 202 || again.Header.Get("X-Sluice-Id") != id {
		t.Fatalf("a repeat after a restart: %d %v", again.StatusCode, again.Header)
	}
	if n := total(); n != 1 {
		t.Fatalf("the downstream got %d requests after a restart, want 1", n)
	}
}
