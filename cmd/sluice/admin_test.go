package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
)

const testToken = "test-token-0123456789"

// countingDown is a downstream that counts 2xx deliveries per message id
// and, while failing is set, answers 500 to requests carrying X-Fail.
type countingDown struct {
	mu      sync.Mutex
	got     map[string]int // 2xx answers per X-Sluice-Id
	failing atomic.Bool
	refused atomic.Int64 // 500s answered
	delay   atomic.Int64 // nanoseconds to wait before answering
	url     string
}

func startCountingDown(t *testing.T) *countingDown {
	t.Helper()
	d := &countingDown{got: map[string]int{}}
	d.url = "http://" + testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		time.Sleep(time.Duration(d.delay.Load()))
		if d.failing.Load() && len(ctx.Request.Header.Peek("X-Fail")) > 0 {
			d.refused.Add(1)
			ctx.SetStatusCode(500)
			return
		}
		d.mu.Lock()
		d.got[string(ctx.Request.Header.Peek("X-Sluice-Id"))]++
		d.mu.Unlock()
		ctx.SetStatusCode(200)
	}})
	return d
}

func (d *countingDown) delivered() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]int, len(d.got))
	for k, v := range d.got {
		out[k] = v
	}
	return out
}

// testNode runs a node on the policy file at path, with reload wired as
// serve wires it.
type testNode struct {
	n     *node
	path  string
	base  string // public listener
	admin string // admin listener
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runNode starts a node of pol in this process, on a loopback listener,
// logging nowhere, and returns it and the listener's address. The caller
// stops it.
func runNode(t testing.TB, pol *policies.Policy) (*node, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := startNode(pol, ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	return n, ln.Addr().String()
}

func startTestNode(t *testing.T, path string) *testNode {
	t.Helper()
	pol, err := policies.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	n, addr := runNode(t, pol)
	n.reload = func() (*policies.Policy, error) { return policies.Load(path) }
	tn := &testNode{n: n, path: path, base: "http://" + addr}
	if n.adminLn != nil {
		tn.admin = "http://" + n.adminLn.Addr().String()
	}
	return tn
}

// adminPolicy is a policy with an admin listener and one buffer route
// whose target is down.
func adminPolicy(dir, down, rate string, extra string) string {
	return fmt.Sprintf(`admin: { listen: "127.0.0.1:0", token: %q }
storage: { dir: %q }
routes:
  - name: orders
    match: { path: /api/orders }
    targets:
      - { name: inv, url: %q, rate: %s, retry: { max_attempts: 1 }, breaker: { failures: 1000 } }
%s`, testToken, filepath.Join(dir, "data"), down, rate, extra)
}

// startAdminNode runs a node in a new directory on adminPolicy with rate,
// its target a new counting downstream; edit, if not nil, changes the
// policy text first. The caller stops the node.
func startAdminNode(t *testing.T, rate string, edit func(pol string) string) (*testNode, *countingDown) {
	t.Helper()
	dir := t.TempDir()
	down := startCountingDown(t)
	pol := adminPolicy(dir, down.url, rate, "")
	if edit != nil {
		pol = edit(pol)
	}
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, pol)
	return startTestNode(t, path), down
}

func apiCall(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

// postOrders posts n orders and returns the ids of those answered 202; any
// other answer fails the test.
func postOrders(t *testing.T, base string, n int, fail bool) []string {
	t.Helper()
	var ids []string
	for i := range n {
		req, _ := http.NewRequest("POST", base+"/api/orders", strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
		if fail {
			req.Header.Set("X-Fail", "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("POST: %d, want 202", resp.StatusCode)
		}
		ids = append(ids, resp.Header.Get("X-Sluice-Id"))
	}
	return ids
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

func targetState(t *testing.T, tn *testNode, route, target string) map[string]any {
	t.Helper()
	code, st := apiCall(t, "GET", tn.admin+"/v1/routes", testToken, nil)
	if code != 200 {
		t.Fatalf("GET /v1/routes: %d %v", code, st)
	}
	for _, r := range st["routes"].([]any) {
		r := r.(map[string]any)
		if r["name"] != route {
			continue
		}
		for _, x := range r["targets"].([]any) {
			if x := x.(map[string]any); x["name"] == target {
				return x
			}
		}
	}
	t.Fatalf("no route %q target %q in %v", route, target, st)
	return nil
}

// TestAdminAuth: every endpoint but the health checks answers 401 with a
// JSON error without the token or with a wrong one, and the admin API is
// not reachable through the public listener.
func TestAdminAuth(t *testing.T) {
	tn, _ := startAdminNode(t, "100/s", nil)
	defer tn.n.stop(10 * time.Second)

	endpoints := []struct{ method, path string }{
		{"GET", "/metrics"},
		{"GET", "/v1/routes"},
		{"POST", "/v1/routes/orders/targets/inv/pause"},
		{"POST", "/v1/routes/orders/targets/inv/resume"},
		{"POST", "/v1/routes/orders/targets/inv/rate"},
		{"GET", "/v1/routes/orders/targets/inv/dead"},
		{"GET", "/v1/routes/orders/targets/inv/dead/x"},
		{"POST", "/v1/routes/orders/targets/inv/dead/replay"},
		{"POST", "/v1/routes/orders/targets/inv/dead/purge"},
		{"POST", "/v1/reload"},
		{"GET", "/v1/nothing-here"},
	}
	for _, e := range endpoints {
		for _, tok := range []string{"", "wrong-token-0123456789", testToken + "x", strings.ToUpper(testToken)} {
			code, body := apiCall(t, e.method, tn.admin+e.path, tok, map[string]any{})
			if code != 401 {
				t.Errorf("%s %s with token %q: %d, want 401", e.method, e.path, tok, code)
				continue
			}
			if errObj, ok := body["error"].(map[string]any); !ok || errObj["code"] != "unauthorized" {
				t.Errorf("%s %s: 401 body %v, want a JSON error", e.method, e.path, body)
			}
		}
	}
	// Basic auth or a token in the query are not accepted either.
	req, _ := http.NewRequest("GET", tn.admin+"/v1/routes?token="+testToken, nil)
	req.SetBasicAuth("admin", testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("basic auth / query token: %d, want 401", resp.StatusCode)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := apiCall(t, "GET", tn.admin+p, "", nil); code != 200 {
			t.Errorf("GET %s: %d %v, want 200", p, code, body)
		}
	}
	if code, _ := apiCall(t, "GET", tn.admin+"/v1/routes", testToken, nil); code != 200 {
		t.Errorf("GET /v1/routes with the token: %d", code)
	}
	// The public listener knows nothing of the admin API.
	for _, p := range []string{"/metrics", "/healthz", "/v1/routes", "/v1/reload"} {
		code, _ := apiCall(t, "GET", tn.base+p, testToken, nil)
		if code != 404 {
			t.Errorf("public listener GET %s: %d, want 404", p, code)
		}
	}
}

// TestAdminRefusesOpenListenerWithoutToken: serve refuses to start with an
// admin listener on a non-loopback address and no token.
func TestAdminRefusesOpenListenerWithoutToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, fmt.Sprintf(`admin: { listen: "0.0.0.0:0" }
storage: { dir: %q }
routes:
  - name: orders
    match: { path: /api/orders }
    targets: [{ name: inv, url: "http://127.0.0.1:1" }]
`, filepath.Join(dir, "data")))
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--policy", path, "--listen", "127.0.0.1:0"}, &out, &errb); code != 1 {
		t.Fatalf("serve: exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "policy.yaml:1: admin.listen:") || !strings.Contains(errb.String(), "no token") {
		t.Errorf("stderr does not name the problem with file:line:\n%s", errb.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Errorf("the data directory was created: serve got further than the policy")
	}
}

// TestAdminMetrics parses /metrics with Prometheus's text parser: what the
// test sent and what was delivered are counted, and what the event loops
// did with passthrough requests.
func TestAdminMetrics(t *testing.T) {
	up := testutil.Serve(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/pass/large" {
			ctx.SetBody(bytes.Repeat([]byte("L"), 100<<10))
		}
	}})
	tn, down := startAdminNode(t, "unlimited", func(pol string) string {
		pol = strings.Replace(pol, "    targets:", "    max_wait: 1h\n    targets:", 1)
		return pol + "  - name: pass\n    match: { path: /pass }\n    mode: passthrough\n    upstream: http://" + up + "\n"
	})
	defer tn.n.stop(10 * time.Second)

	const n = 40
	ids := postOrders(t, tn.base, n, false)
	if !waitFor(10*time.Second, func() bool { return len(down.delivered()) == n }) {
		t.Fatalf("delivered %d of %d", len(down.delivered()), n)
	}
	// Refusals: with the target paused (no end), the route's max_wait
	// refuses new requests with 503 backlog_too_long.
	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/pause", testToken, nil); code != 200 {
		t.Fatalf("pause: %d %v", code, body)
	}
	for range 3 {
		resp, err := http.Post(tn.base+"/api/orders", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Fatalf("POST to a paused target with max_wait: %d, want 503", resp.StatusCode)
		}
	}

	var fams map[string]*dtoFamily
	waitFor(5*time.Second, func() bool {
		fams = scrape(t, tn.admin)
		return value(fams, "sluice_target_delivered_total", "target", "inv") == n
	})
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_route_accepted_total", []string{"route", "orders"}, n},
		{"sluice_route_appended_total", []string{"route", "orders"}, n},
		{"sluice_target_delivered_total", []string{"route", "orders", "target", "inv"}, n},
		{"sluice_target_backlog_messages", []string{"target", "inv"}, 0},
		{"sluice_target_oldest_pending_age_seconds", []string{"target", "inv"}, 0},
		{"sluice_target_dead_total", []string{"target", "inv"}, 0},
		{"sluice_target_outcomes_total", []string{"target", "inv", "outcome", "delivered", "class", "2xx"}, n},
		{"sluice_route_refused_total", []string{"route", "orders", "reason", "backlog_too_long"}, 3},
		{"sluice_target_operator_paused", []string{"target", "inv"}, 1},
		{"sluice_target_rate_per_second", []string{"target", "inv"}, 0},
		{"sluice_target_breaker_state", []string{"target", "inv", "state", "closed"}, 1},
		{"sluice_target_breaker_state", []string{"target", "inv", "state", "open"}, 0},
		{"sluice_target_rate_reason", []string{"target", "inv", "reason", "operator_pause"}, 1},
	}
	for _, c := range checks {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := count(fams, "sluice_route_ack_seconds", "route", "orders"); got != n+3 {
		t.Errorf("sluice_route_ack_seconds count = %v, want %d", got, n+3)
	}
	if got := count(fams, "sluice_writer_fsync_seconds"); got <= 0 {
		t.Errorf("sluice_writer_fsync_seconds count = %v, want the commits' fsyncs", got)
	}
	if got := value(fams, "sluice_target_expired_total", "target", "inv"); got != 0 {
		t.Errorf("sluice_target_expired_total = %v, want 0", got)
	}
	if got := value(fams, "sluice_store_bytes"); got <= 0 {
		t.Errorf("sluice_store_bytes = %v", got)
	}
	if got := value(fams, "sluice_writer_commits_total", "route", "orders"); got <= 0 {
		t.Errorf("sluice_writer_commits_total = %v", got)
	}
	// Passthrough: three relayed by a loop, one large answer streamed, then
	// a chunked upload that hands the connection over, each on its own
	// connection (the orders were stored by the loops; the status API's
	// requests were handed over).
	handed := value(fams, "sluice_event_loop_handed_over_total")
	for _, path := range []string{"/pass/a", "/pass/b", "/pass/c", "/pass/large"} {
		postOnce(t, tn.base+path, strings.NewReader("x"))
	}
	postOnce(t, tn.base+"/pass/chunked", io.MultiReader(strings.NewReader("chunked"))) // no length: chunked
	fams = scrape(t, tn.admin)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_event_loop_requests_total", []string{"how", "relayed"}, 3},
		{"sluice_event_loop_requests_total", []string{"how", "streamed"}, 1},
		{"sluice_event_loop_handed_over_total", nil, handed + 1},
	} {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for name := range fams {
		if !strings.HasPrefix(name, "sluice_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("series %s is not prefixed sluice_", name)
		}
	}
	for _, id := range ids {
		for name, f := range fams {
			for _, m := range f.Metric {
				for _, l := range m.Label {
					if l.GetValue() == id {
						t.Fatalf("series %s carries a message id", name)
					}
				}
			}
		}
	}
}

// TestAdminPauseResumeSurvivesRestart: a paused target gets nothing while
// requests are still accepted (202); the pause survives a restart; resume
// delivers everything once.
func TestAdminPauseResumeSurvivesRestart(t *testing.T) {
	tn, down := startAdminNode(t, "unlimited", nil)

	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/pause", testToken, nil); code != 200 {
		t.Fatalf("pause: %d %v", code, body)
	}
	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/nope/pause", testToken, nil); code != 404 {
		t.Errorf("pause of an unknown target: %d %v, want 404", code, body)
	}
	ids := postOrders(t, tn.base, 20, false)
	// Each new message's ETA says so: none while paused with no end.
	resp, err := http.Post(tn.base+"/api/orders", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct {
		ID      string
		Targets []map[string]any
	}
	json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if resp.StatusCode != 202 || len(accepted.Targets) != 1 || accepted.Targets[0]["eta"] != nil {
		t.Errorf("202 while paused: %d %+v, want no eta", resp.StatusCode, accepted)
	}
	ids = append(ids, accepted.ID)
	time.Sleep(500 * time.Millisecond)
	if got := len(down.delivered()); got != 0 {
		t.Fatalf("%d delivered while paused", got)
	}
	st := targetState(t, tn, "orders", "inv")
	if st["paused"] != true || st["rate_reason"] != "operator_pause" || st["backlog"].(float64) != 21 || st["drain_eta_seconds"].(float64) != -1 {
		t.Errorf("state while paused: %v", st)
	}
	if err := tn.n.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	// Restart: still paused, and says so.
	tn = startTestNode(t, tn.path)
	defer func() { tn.n.stop(10 * time.Second) }()
	ids = append(ids, postOrders(t, tn.base, 5, false)...)
	time.Sleep(500 * time.Millisecond)
	if got := len(down.delivered()); got != 0 {
		t.Fatalf("%d delivered after a restart: the operator's pause was lost", got)
	}
	if st := targetState(t, tn, "orders", "inv"); st["paused"] != true {
		t.Errorf("state after restart: %v", st)
	}
	fams := scrape(t, tn.admin)
	if v := value(fams, "sluice_target_operator_paused", "target", "inv"); v != 1 {
		t.Errorf("sluice_target_operator_paused = %v after restart", v)
	}

	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/resume", testToken, nil); code != 200 {
		t.Fatalf("resume: %d %v", code, body)
	}
	if !waitFor(10*time.Second, func() bool { return len(down.delivered()) == len(ids) }) {
		t.Fatalf("delivered %d of %d after resume", len(down.delivered()), len(ids))
	}
	for _, id := range ids {
		if c := down.delivered()[id]; c != 1 {
			t.Errorf("id %s delivered %d times", id, c)
		}
	}
}

// TestAdminPauseUntilEnds: a pause with an end resumes by itself.
func TestAdminPauseUntilEnds(t *testing.T) {
	tn, down := startAdminNode(t, "unlimited", nil)
	defer tn.n.stop(10 * time.Second)
	until := time.Now().Add(700 * time.Millisecond)
	if code, body := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/pause", testToken, map[string]any{"until": until}); code != 200 {
		t.Fatalf("pause: %d %v", code, body)
	}
	postOrders(t, tn.base, 5, false)
	if got := len(down.delivered()); got != 0 {
		t.Fatalf("%d delivered while paused", got)
	}
	if !waitFor(5*time.Second, func() bool { return len(down.delivered()) == 5 }) {
		t.Fatalf("the pause did not end: %d delivered", len(down.delivered()))
	}
	if time.Now().Before(until) {
		t.Errorf("delivered before the pause's end")
	}
}

// TestAdminReplayWhileTrafficFlows: dead letters replayed by a filter while
// new traffic flows: every accepted message is delivered exactly once.
func TestAdminReplayWhileTrafficFlows(t *testing.T) {
	tn, down := startAdminNode(t, "500/s", nil)
	down.failing.Store(true)
	defer tn.n.stop(10 * time.Second)

	failed := postOrders(t, tn.base, 30, true)
	good := postOrders(t, tn.base, 10, false)
	if !waitFor(10*time.Second, func() bool {
		return targetState(t, tn, "orders", "inv")["dead"].(float64) == 30
	}) {
		t.Fatalf("dead letters: %v", targetState(t, tn, "orders", "inv"))
	}
	if v := value(scrape(t, tn.admin), "sluice_target_outcomes_total", "target", "inv", "outcome", "dead", "class", "5xx"); v != 30 {
		t.Errorf("sluice_target_outcomes_total{outcome=dead,class=5xx} = %v, want 30", v)
	}
	code, list := apiCall(t, "GET", tn.admin+"/v1/routes/orders/targets/inv/dead?status=500&limit=7", testToken, nil)
	if code != 200 || len(list["dead_letters"].([]any)) != 7 || list["next"] == nil {
		t.Fatalf("list page: %d %v", code, list)
	}
	first := list["dead_letters"].([]any)[0].(map[string]any)
	if first["class"] != "5xx" || first["status"].(float64) != 500 {
		t.Errorf("dead letter: %v", first)
	}
	code, one := apiCall(t, "GET", tn.admin+"/v1/routes/orders/targets/inv/dead/"+first["id"].(string), testToken, nil)
	if code != 200 || one["body"] == nil || one["history"] == nil {
		t.Errorf("show: %d %v", code, one)
	}
	if code, _ := apiCall(t, "GET", tn.admin+"/v1/routes/orders/targets/inv/dead/"+good[0], testToken, nil); code != 404 {
		t.Errorf("show of a delivered message: %d, want 404", code)
	}

	// Traffic keeps flowing while the replay runs.
	down.failing.Store(false)
	var more []string
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var refused atomic.Int64
	wg.Go(func() {
		for i := 0; i < 200; i++ {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := http.Post(tn.base+"/api/orders", "application/json", strings.NewReader(`{"more":true}`))
			if err != nil || resp.StatusCode != 202 {
				refused.Add(1)
				continue
			}
			resp.Body.Close()
			more = append(more, resp.Header.Get("X-Sluice-Id"))
			time.Sleep(5 * time.Millisecond)
		}
	})
	code, res := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/dead/replay", testToken,
		map[string]any{"filter": map[string]any{"status": 500}, "rate": "200/s"})
	if code != 200 || res["replayed"].(float64) != 30 || res["done"] != true {
		t.Fatalf("replay: %d %v", code, res)
	}
	// Replaying again finds nothing: none twice.
	code, res = apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/dead/replay", testToken,
		map[string]any{"filter": map[string]any{"status": 500}})
	if code != 200 || res["replayed"] != nil && res["replayed"].(float64) != 0 {
		t.Fatalf("second replay: %d %v", code, res)
	}
	wg.Wait()
	close(stop)
	if refused.Load() > 0 {
		t.Fatalf("%d requests refused during the replay", refused.Load())
	}
	all := append(append(append([]string(nil), failed...), good...), more...)
	if !waitFor(15*time.Second, func() bool { return len(down.delivered()) == len(all) }) {
		t.Fatalf("delivered %d of %d", len(down.delivered()), len(all))
	}
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	got := down.delivered()
	for _, id := range all {
		if got[id] != 1 {
			t.Errorf("id %s delivered %d times", id, got[id])
		}
	}
	if len(got) != len(all) {
		t.Errorf("downstream got %d ids, %d accepted", len(got), len(all))
	}
	if st := targetState(t, tn, "orders", "inv"); st["dead_letters"].(float64) != 0 {
		t.Errorf("dead letters left: %v", st)
	}
}

// TestAdminBadInput: malformed bodies get a JSON 400 that does not echo them.
func TestAdminBadInput(t *testing.T) {
	tn, _ := startAdminNode(t, "unlimited", nil)
	defer tn.n.stop(10 * time.Second)
	secret := "SECRET-PAYLOAD-<script>"
	cases := []struct{ path, body string }{
		{"/v1/routes/orders/targets/inv/pause", `{"until":"` + secret + `"}`},
		{"/v1/routes/orders/targets/inv/pause", `{"until":"2000-01-01T00:00:00Z"}`},
		{"/v1/routes/orders/targets/inv/rate", `{"rate":"` + secret + `"}`},
		{"/v1/routes/orders/targets/inv/rate", `{}`},
		{"/v1/routes/orders/targets/inv/rate", `{"` + secret + `":1}`},
		{"/v1/routes/orders/targets/inv/dead/replay", `{"all":true,"ids":["a"]}`},
		{"/v1/routes/orders/targets/inv/dead/replay", `{"all":true,"rate":"0"}`},
		{"/v1/routes/orders/targets/inv/dead/purge", `{"filter":{"class":"` + secret + `"}}`},
		{"/v1/routes/orders/targets/inv/dead/purge", `[1,2` + secret},
	}
	for _, c := range cases {
		req, _ := http.NewRequest("POST", tn.admin+c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e map[string]any
		if resp.StatusCode != 400 || json.Unmarshal(data, &e) != nil || e["error"] == nil {
			t.Errorf("POST %s %s: %d %s, want a JSON 400", c.path, c.body, resp.StatusCode, data)
		}
		if strings.Contains(string(data), "SECRET") {
			t.Errorf("POST %s: the reply echoes the request: %s", c.path, data)
		}
		if strings.Contains(c.body, `"until":"SECRET`) && !strings.Contains(string(data), "RFC 3339") {
			t.Errorf("POST %s with a bad time: %s, want it to say RFC 3339", c.path, data)
		}
	}
	if st := targetState(t, tn, "orders", "inv"); st["paused"] != false || st["rate"] != "unlimited" {
		t.Errorf("bad requests changed the target: %v", st)
	}
}

// TestDataDirHeld: a second serve, inspect and dlq on a directory a
// running sluice holds say so, with its pid, at once.
func TestDataDirHeld(t *testing.T) {
	tn, _ := startAdminNode(t, "unlimited", nil)
	defer tn.n.stop(10 * time.Second)
	want := fmt.Sprintf("held by a running sluice (pid %d)", os.Getpid())
	for _, args := range [][]string{
		{"inspect", "--data", filepath.Join(filepath.Dir(tn.path), "data")},
		{"dlq", "list", "--policy", tn.path},
		{"serve", "--policy", tn.path, "--listen", "127.0.0.1:0"},
	} {
		var out, errb bytes.Buffer
		start := time.Now()
		code := run(args, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), want) {
			t.Errorf("sluice %s: exit %d, stderr %q; want 1 and %q", args[0], code, errb.String(), want)
		}
		if time.Since(start) > 900*time.Millisecond {
			t.Errorf("sluice %s took %v: it waited for a lock", args[0], time.Since(start))
		}
	}
}

type dtoFamily = dto.MetricFamily

// scrape GETs /metrics and parses it with Prometheus's text parser.
// postOnce posts body to url on a connection of its own and wants 200.
func postOnce(t *testing.T, url string, body io.Reader) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Post(url, "text/plain", body)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d", url, resp.StatusCode)
	}
}

func scrape(t *testing.T, admin string) map[string]*dtoFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// value returns the value of the first series of name whose labels include
// the given name/value pairs; NaN if none.
func value(fams map[string]*dtoFamily, name string, labels ...string) float64 {
	m := find(fams, name, labels...)
	switch {
	case m == nil:
		return -12345
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return -12345
}

func count(fams map[string]*dtoFamily, name string, labels ...string) float64 {
	if m := find(fams, name, labels...); m != nil && m.Histogram != nil {
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func find(fams map[string]*dtoFamily, name string, labels ...string) *dto.Metric {
	f, ok := fams[name]
	if !ok {
		return nil
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// TestSpilloverDeadLetters: a spillover route's dead letters are listed
// and replayed through the admin API while it runs, and by the offline
// 'sluice dlq' once it is stopped (it used to say "no buffer route").
func TestSpilloverDeadLetters(t *testing.T) {
	tn, down := startAdminNode(t, "unlimited", func(pol string) string {
		return strings.Replace(pol, "    targets:", "    mode: spillover\n    targets:", 1)
	})
	stopped := false
	defer func() {
		if !stopped {
			tn.n.stop(10 * time.Second)
		}
	}()
	// Paused, the route stores every request; failing, they die.
	apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/pause", testToken, nil)
	ids := postOrders(t, tn.base, 4, true)
	down.failing.Store(true)
	apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/resume", testToken, nil)
	if !waitFor(10*time.Second, func() bool { return down.refused.Load() == 4 }) {
		t.Fatalf("attempts: %d", down.refused.Load())
	}
	// The outcomes are recorded after the answers: wait for all four.
	var code int
	var list map[string]any
	waitFor(5*time.Second, func() bool {
		code, list = apiCall(t, "GET", tn.admin+"/v1/routes/orders/targets/inv/dead", testToken, nil)
		return code == 200 && len(list["dead_letters"].([]any)) == 4
	})
	if code != 200 || len(list["dead_letters"].([]any)) != 4 {
		t.Fatalf("spillover dead letters: %d %v", code, list)
	}
	code, res := apiCall(t, "POST", tn.admin+"/v1/routes/orders/targets/inv/dead/purge", testToken, map[string]any{"ids": []string{ids[0]}})
	if code != 200 || res["purged"].(float64) != 1 {
		t.Fatalf("purge: %d %v", code, res)
	}
	if err := tn.n.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	stopped = true
	var out, errb bytes.Buffer
	if code := run([]string{"dlq", "list", "--policy", tn.path}, &out, &errb); code != 0 || !strings.Contains(out.String(), "3 dead letters") || !strings.Contains(out.String(), ids[1]) {
		t.Errorf("offline dlq list: exit %d\n%s%s", code, out.String(), errb.String())
	}
}

// TestPauseSurvivesKill9: a pause acknowledged by the admin API survives a
// SIGKILL of the real binary right after: restarted, the target stays
// paused (nothing delivered, requests still accepted) until resumed; then
// every accepted message arrives once.
func TestPauseSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	down := startCountingDown(t)
	path := filepath.Join(dir, "policy.yaml")
	listen, adminAddr := freePort(t), freePort(t)
	pol := strings.Replace(adminPolicy(dir, down.url, "unlimited", ""), "127.0.0.1:0", adminAddr, 1)
	writeFile(t, path, fmt.Sprintf("listen: %q\n", listen)+pol)
	admin := "http://" + adminAddr
	base := "http://" + listen

	p := startSluice(t, path, listen)
	ids := postOrders(t, base, 5, false)
	if !waitFor(10*time.Second, func() bool { return len(down.delivered()) == 5 }) {
		t.Fatalf("delivered %d of 5", len(down.delivered()))
	}
	if code, body := apiCall(t, "POST", admin+"/v1/routes/orders/targets/inv/pause", testToken, nil); code != 200 {
		t.Fatalf("pause: %d %v", code, body)
	}
	p.cmd.Process.Kill() // SIGKILL
	p.cmd.Wait()

	p = startSluice(t, path, listen)
	ids = append(ids, postOrders(t, base, 10, false)...)
	time.Sleep(700 * time.Millisecond)
	if got := len(down.delivered()); got != 5 {
		t.Fatalf("%d delivered after kill -9 and restart; the pause was lost", got)
	}
	if code, body := apiCall(t, "POST", admin+"/v1/routes/orders/targets/inv/resume", testToken, nil); code != 200 {
		t.Fatalf("resume: %d %v", code, body)
	}
	if !waitFor(10*time.Second, func() bool { return len(down.delivered()) == len(ids) }) {
		t.Fatalf("delivered %d of %d after resume; logs:\n%s", len(down.delivered()), len(ids), p.output())
	}
	for _, id := range ids {
		if c := down.delivered()[id]; c != 1 {
			t.Errorf("id %s delivered %d times", id, c)
		}
	}
}

// TestReadyz: ready while appends are accepted; 503 with the reason once
// storage.max_bytes is reached (buffered routes answer 503 then too), and
// while shutting down; /healthz stays 200 throughout.
func TestReadyz(t *testing.T) {
	tn, _ := startAdminNode(t, "0", func(pol string) string { return strings.Replace(pol, "storage: {", "storage: { max_bytes: 1MiB,", 1) })
	defer tn.n.stop(10 * time.Second)
	if code, body := apiCall(t, "GET", tn.admin+"/readyz", "", nil); code != 200 {
		t.Fatalf("readyz: %d %v", code, body)
	}
	// Fill past max_bytes (the target is paused by its rate 0).
	big := strings.Repeat("x", 64<<10)
	for range 64 {
		resp, err := http.Post(tn.base+"/api/orders", "text/plain", strings.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 503 {
			break
		}
	}
	code, body := apiCall(t, "GET", tn.admin+"/readyz", "", nil)
	if code != 503 || !strings.Contains(fmt.Sprint(body), "storage full") {
		t.Fatalf("readyz past max_bytes: %d %v", code, body)
	}
	if code, _ := apiCall(t, "GET", tn.admin+"/healthz", "", nil); code != 200 {
		t.Errorf("healthz: %d", code)
	}
	tn.n.stopping.Store(true)
	if code, _ := apiCall(t, "GET", tn.admin+"/readyz", "", nil); code != 503 {
		t.Errorf("readyz while stopping: %d, want 503", code)
	}
	tn.n.stopping.Store(false)
}

// TestStatusAPIAcceptsAdminToken: with status_api.token set, a status
// request needs a token; the admin token is one (serve passes it to the
// proxy), a wrong one is not.
func TestStatusAPIAcceptsAdminToken(t *testing.T) {
	tn, _ := startAdminNode(t, "0", func(pol string) string { return "status_api: { token: status-token-0123456789 }\n" + pol })
	defer tn.n.stop(10 * time.Second)
	id := postOrders(t, tn.base, 1, false)[0]
	for tok, want := range map[string]int{"": 401, "wrong-token-0123456789": 401, "status-token-0123456789": 200, testToken: 200} {
		if code, body := apiCall(t, "GET", tn.base+"/_sluice/v1/messages/"+id, tok, nil); code != want {
			t.Errorf("status with token %q: %d %v, want %d", tok, code, body, want)
		}
	}
}
