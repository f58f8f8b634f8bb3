package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

const token = "admin-test-token-0123"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeTarget records what the controls did to it.
type fakeTarget struct {
	mu     sync.Mutex
	paused bool
	rate   *policies.Rate
}

func (f *fakeTarget) Pause()                  { f.mu.Lock(); f.paused = true; f.mu.Unlock() }
func (f *fakeTarget) Resume()                 { f.mu.Lock(); f.paused = false; f.mu.Unlock() }
func (f *fakeTarget) SetRate(r policies.Rate) { f.mu.Lock(); f.rate = &r; f.mu.Unlock() }
func (f *fakeTarget) ResetRate()              { f.mu.Lock(); f.rate = nil; f.mu.Unlock() }
func (f *fakeTarget) state() (bool, *policies.Rate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused, f.rate
}

// fakeNode has one route, orders, with one target, inv.
type fakeNode struct {
	inv     *fakeTarget
	backlog uint64
}

func (n *fakeNode) Target(route, target string) (Target, bool) {
	if route == "orders" && target == "inv" {
		return n.inv, true
	}
	return nil, false
}

func (n *fakeNode) State() State {
	paused, _ := n.inv.state()
	return State{Routes: []RouteState{{Name: "orders", Mode: "buffer", Appended: 100, Targets: []TargetState{{
		Name: "inv", Backlog: n.backlog, Pending: n.backlog, Rate: 10, RateText: "10/s", RateReason: "policy",
		Paused: paused, Breaker: "closed", DrainETASeconds: float64(n.backlog) / 10, Delivered: 58,
	}}}}, StoreBytes: 4096, FreeBytes: 1 << 30}
}

func (n *fakeNode) Ready() error { return nil }

// fakeDead is a dead-letter list in memory.
type fakeDead struct {
	mu      sync.Mutex
	letters []DeadLetter // by seq
	revived []uint64
	busy    int // the next busy changes fail as "in flight; try again"
}

func (f *fakeDead) List(route, target string, after uint64, limit int) ([]DeadLetter, error) {
	if route != "orders" || target != "inv" {
		return nil, ErrNoTarget
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []DeadLetter
	for _, d := range f.letters {
		if d.Seq > after && len(out) < limit {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeDead) Get(route, target, id string) (DeadLetter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.letters {
		if d.ID == id {
			return d, nil
		}
	}
	return DeadLetter{}, ErrNotFound
}

func (f *fakeDead) remove(seq uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy > 0 {
		f.busy--
		return fmt.Errorf("seq %d is in flight; try again", seq)
	}
	for i, d := range f.letters {
		if d.Seq == seq {
			f.letters = append(f.letters[:i], f.letters[i+1:]...)
			return nil
		}
	}
	return ErrNotFound
}

func (f *fakeDead) Revive(ctx context.Context, route, target string, seq uint64, at time.Time) error {
	if err := f.remove(seq); err != nil {
		return err
	}
	f.mu.Lock()
	f.revived = append(f.revived, seq)
	f.mu.Unlock()
	return nil
}

func (f *fakeDead) Purge(ctx context.Context, route, target string, seq uint64) error {
	return f.remove(seq)
}

type fixture struct {
	node     *fakeNode
	dead     *fakeDead
	controls *Controls
	srv      *httptest.Server
	dir      string
	server   *Server
	urls     []string // request URIs seen
	mu       sync.Mutex
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{node: &fakeNode{inv: &fakeTarget{}, backlog: 42}, dead: &fakeDead{}, dir: t.TempDir()}
	for i := 1; i <= 1200; i++ {
		d := DeadLetter{ID: fmt.Sprintf("id-%04d", i), Seq: uint64(i), Status: 500, Class: "5xx", DeadAt: time.Unix(int64(i), 0)}
		if i%3 == 0 {
			d.Status, d.Class, d.Error = 0, "timeout", "timeout after 5s"
		}
		f.dead.letters = append(f.dead.letters, d)
	}
	var err error
	if f.controls, err = OpenControls(f.dir, nil, quiet); err != nil {
		t.Fatal(err)
	}
	if err := f.controls.Attach(f.node); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Token: token, Node: f.node, Controls: f.controls, Dead: f.dead, Metrics: NewMetrics(f.node.State), Logger: quiet,
		Reload: func(ctx context.Context) (ReloadResult, error) {
			return ReloadResult{}, errors.New("policy.yaml:3: routes[0].name: required")
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.server = s
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.urls = append(f.urls, r.URL.String())
		f.mu.Unlock()
		s.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) call(t testing.TB, method, path, tok, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

func TestHealthOpenRestClosed(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"/healthz", "/readyz", "/", "/ui/dashboard.js", "/ui/uPlot.iife.min.js"} {
		if code, _ := f.call(t, "GET", p, "", ""); code != 200 {
			t.Errorf("GET %s without a token: %d, want 200", p, code)
		}
	}
	if code, _ := f.call(t, "GET", "/ui/../admin.go", "", ""); code == 200 {
		t.Errorf("the dashboard serves files outside ui/")
	}
	if code, body := f.call(t, "GET", "/v1/routes", "", ""); code != 401 || body["error"] == nil {
		t.Errorf("GET /v1/routes without a token: %d %v", code, body)
	}
}

// TestControlsPersist: a pause and a rate are in the file before the API
// answers; a new Controls over the same directory applies them; an ended
// override is dropped; a damaged file is an error, not a silent resume.
func TestControlsPersist(t *testing.T) {
	f := newFixture(t)
	if code, body := f.call(t, "POST", "/v1/routes/orders/targets/inv/pause", token, ""); code != 200 {
		t.Fatalf("pause: %d %v", code, body)
	}
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if code, body := f.call(t, "POST", "/v1/routes/orders/targets/inv/rate", token, `{"rate":"5/s","until":"`+until.Format(time.RFC3339)+`"}`); code != 200 {
		t.Fatalf("rate: %d %v", code, body)
	}
	if p, r := f.node.inv.state(); !p || r == nil || r.PerSecond != 5 {
		t.Fatalf("target after pause and rate: paused %v rate %v", p, r)
	}
	// A fresh start: the overrides come back from the file.
	c2, err := OpenControls(f.dir, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t2 := &fakeTarget{}
	if err := c2.Attach(&fakeNode{inv: t2}); err != nil {
		t.Fatal(err)
	}
	if p, r := t2.state(); !p || r == nil || r.PerSecond != 5 {
		t.Fatalf("after restart: paused %v rate %v", p, r)
	}
	o, _ := c2.Get("orders", "inv")
	if !o.RateUntil.Equal(until) {
		t.Errorf("rate until %v, want %v", o.RateUntil, until)
	}
	// The rate's end passes: a start later drops it and says so in the file.
	later := func() time.Time { return until.Add(time.Second) }
	c3, err := OpenControls(f.dir, later, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t3 := &fakeTarget{}
	if err := c3.Attach(&fakeNode{inv: t3}); err != nil {
		t.Fatal(err)
	}
	if p, r := t3.state(); !p || r != nil {
		t.Errorf("after the rate's end: paused %v rate %v, want paused and the policy's rate", p, r)
	}
	data, _ := os.ReadFile(filepath.Join(f.dir, ControlsFile))
	if strings.Contains(string(data), "5/s") {
		t.Errorf("ended rate still in the file: %s", data)
	}
	// No temporary files are left behind.
	if m, _ := filepath.Glob(filepath.Join(f.dir, ".*tmp")); len(m) > 0 {
		t.Errorf("left over: %v", m)
	}
	// A damaged file: refuse to start rather than resume a paused target.
	os.WriteFile(filepath.Join(f.dir, ControlsFile), []byte(`{"version":1,"overrides":[{"route":`), 0o644)
	if _, err := OpenControls(f.dir, nil, quiet); err == nil || !strings.Contains(err.Error(), "controls.json") {
		t.Errorf("damaged file: %v, want an error naming it", err)
	}
}

// TestControlsNotSavedNotApplied: when the file cannot be written, the
// change is refused and the target is left as it was.
func TestControlsNotSavedNotApplied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes into a read-only directory")
	}
	f := newFixture(t)
	os.Chmod(f.dir, 0o500)
	defer os.Chmod(f.dir, 0o700)
	if code, body := f.call(t, "POST", "/v1/routes/orders/targets/inv/pause", token, ""); code != 500 {
		t.Fatalf("pause with an unwritable directory: %d %v, want 500", code, body)
	}
	if p, _ := f.node.inv.state(); p {
		t.Errorf("the target was paused though the pause was not saved")
	}
}

// TestControlsUnwritableFile is the same as root can see it: the controls
// file's path is a directory, so the rename fails.
func TestControlsUnwritableFile(t *testing.T) {
	f := newFixture(t)
	if err := os.Mkdir(filepath.Join(f.dir, ControlsFile), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.dir, ControlsFile, "x"), nil, 0o644)
	if code, body := f.call(t, "POST", "/v1/routes/orders/targets/inv/pause", token, ""); code != 500 {
		t.Fatalf("pause with an unwritable file: %d %v, want 500", code, body)
	}
	if p, _ := f.node.inv.state(); p {
		t.Errorf("the target was paused though the pause was not saved")
	}
	if _, ok := f.controls.Get("orders", "inv"); ok {
		t.Errorf("the failed pause is remembered")
	}
}

func TestDeadLetterFilters(t *testing.T) {
	f := newFixture(t)
	code, body := f.call(t, "GET", "/v1/routes/orders/targets/inv/dead?class=timeout&limit=1000", token, "")
	if code != 200 || len(body["dead_letters"].([]any)) != 400 || body["next"] != nil {
		t.Fatalf("class filter: %d, %d letters, next %v", code, len(body["dead_letters"].([]any)), body["next"])
	}
	// Pages: 5xx, 300 at a time, follow next to the end.
	seen := map[string]bool{}
	after := ""
	for range 10 {
		code, body = f.call(t, "GET", "/v1/routes/orders/targets/inv/dead?status=500&limit=300"+after, token, "")
		if code != 200 {
			t.Fatalf("page: %d %v", code, body)
		}
		for _, d := range body["dead_letters"].([]any) {
			id := d.(map[string]any)["id"].(string)
			if seen[id] {
				t.Fatalf("%s on two pages", id)
			}
			seen[id] = true
		}
		if body["next"] == nil {
			break
		}
		after = "&after=" + body["next"].(string)
	}
	if len(seen) != 800 {
		t.Errorf("paged through %d 5xx letters, want 800", len(seen))
	}
	since := time.Unix(1000, 0).UTC().Format(time.RFC3339)
	code, body = f.call(t, "GET", "/v1/routes/orders/targets/inv/dead?since="+since, token, "")
	if code != 200 || len(body["dead_letters"].([]any)) != 100 {
		t.Errorf("since: %d %d", code, len(body["dead_letters"].([]any)))
	}
	// Each bad parameter is a 400 naming it, as the messages endpoints do.
	for _, q := range []string{"status=abc", "status=700", "class=6xx", "since=yesterday", "until=soon", "limit=0", "limit=100000", "after=-1"} {
		code, body := f.call(t, "GET", "/v1/routes/orders/targets/inv/dead?"+q, token, "")
		e, _ := body["error"].(map[string]any)
		if param, _, _ := strings.Cut(q, "="); code != 400 || e["code"] != "bad_request" || e["param"] != param {
			t.Errorf("?%s: %d %v, want 400 bad_request naming %s", q, code, body, param)
		}
	}
	// A time with a fraction of a second, as the messages endpoints take.
	if code, body := f.call(t, "GET", "/v1/routes/orders/targets/inv/dead?since="+time.Unix(1000, 5).UTC().Format(time.RFC3339Nano), token, ""); code != 200 {
		t.Errorf("since with nanoseconds: %d %v", code, body)
	}
	if code, _ := f.call(t, "GET", "/v1/routes/orders/targets/nope/dead", token, ""); code != 404 {
		t.Errorf("unknown target: %d, want 404", code)
	}
	// Replay by filter takes each matching letter once, in order.
	code, body = f.call(t, "POST", "/v1/routes/orders/targets/inv/dead/replay", token, `{"filter":{"class":"timeout"},"rate":"unlimited"}`)
	if code != 200 || body["replayed"].(float64) != 400 || body["done"] != true {
		t.Fatalf("replay: %d %v", code, body)
	}
	seenSeq := map[uint64]bool{}
	for i, s := range f.dead.revived {
		if seenSeq[s] || s%3 != 0 || (i > 0 && s < f.dead.revived[i-1]) {
			t.Fatalf("revived %v: twice, not a timeout, or out of order", s)
		}
		seenSeq[s] = true
	}
	code, body = f.call(t, "POST", "/v1/routes/orders/targets/inv/dead/purge", token, `{"ids":["id-0001","id-0003","nope","<script>"]}`)
	if code != 200 || body["purged"].(float64) != 1 || len(body["not_found"].([]any)) != 2 || body["invalid"].(float64) != 1 {
		t.Errorf("purge by ids: %d %v", code, body)
	}
	code, body = f.call(t, "POST", "/v1/routes/orders/targets/inv/dead/purge", token, `{"all":true}`)
	if code != 200 || body["purged"].(float64) != 799 {
		t.Errorf("purge all: %d %v", code, body)
	}
}

func TestReloadErrorsAreReturned(t *testing.T) {
	f := newFixture(t)
	code, body := f.call(t, "POST", "/v1/reload", token, "")
	if code != 422 {
		t.Fatalf("reload: %d %v", code, body)
	}
	errs := body["error"].(map[string]any)["errors"].([]any)
	if len(errs) != 1 || errs[0] != "policy.yaml:3: routes[0].name: required" {
		t.Errorf("errors: %v", errs)
	}
}

func TestClassOf(t *testing.T) {
	for _, c := range []struct {
		status int
		err    string
		want   string
	}{
		{503, "status 503", "5xx"},
		{404, "status 404", "4xx"},
		{0, "timeout after 5s", "timeout"},
		{0, "connect: connection refused", "connect"},
		{0, "record damaged: crc mismatch", "damaged"},
		{0, "something else", "other"},
	} {
		if got := ClassOf(c.status, c.err); got != c.want {
			t.Errorf("ClassOf(%d, %q) = %s, want %s", c.status, c.err, got, c.want)
		}
	}
}

// FuzzOpenControls: whatever the controls file holds, OpenControls returns
// an error or controls whose every rate parses; it never panics.
func FuzzOpenControls(f *testing.F) {
	f.Add([]byte(`{"version":1,"overrides":[{"route":"orders","target":"inv","paused":true}]}`))
	f.Add([]byte(`{"version":1,"overrides":[{"route":"orders","target":"inv","rate":"5/s","rate_until":"2026-12-05T01:00:00Z"}]}`))
	f.Add([]byte(`{"overrides":[{"rate":"fast"}]}`))
	f.Add([]byte(``))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, ControlsFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := OpenControls(dir, nil, quiet)
		if err != nil {
			return
		}
		for _, o := range c.entries {
			if o.Rate != "" {
				if _, err := policies.ParseRate(o.Rate); err != nil {
					t.Fatalf("rate %q kept: %v", o.Rate, err)
				}
			}
		}
		c.Attach(&fakeNode{inv: &fakeTarget{}})
	})
}

// TestHistory: while Serve runs, the state is sampled for the dashboard;
// Serve returns after Shutdown with the sampling stopped.
func TestHistory(t *testing.T) {
	node := &fakeNode{inv: &fakeTarget{}, backlog: 42}
	c, err := OpenControls(t.TempDir(), nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Token: token, Node: node, Controls: c, Metrics: NewMetrics(node.State), Logger: quiet, HistoryEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	time.Sleep(100 * time.Millisecond)
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/v1/history", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ Samples []Sample }
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if len(h.Samples) < 3 || h.Samples[0].Backlog["orders/inv"] != 42 || h.Samples[0].Appended != 100 || h.Samples[0].Delivered != 58 {
		t.Fatalf("history: %+v", h.Samples)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	n := len(s.hist.all())
	time.Sleep(50 * time.Millisecond)
	if len(s.hist.all()) != n {
		t.Errorf("still sampling after Serve returned")
	}
	// The ring keeps HistoryKeep of samples.
	for range s.hist.max + 10 {
		s.hist.add(Sample{})
	}
	if len(s.hist.all()) != s.hist.max || s.hist.max != int(HistoryKeep/(10*time.Millisecond)) {
		t.Errorf("ring holds %d, max %d", len(s.hist.all()), s.hist.max)
	}
}

// FuzzRequestBodies sends arbitrary bodies to every POST endpoint: the
// answer is never a 5xx (the fake store does not fail), always JSON, and
// never echoes the body.
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{``, `{}`, `{"until":"2030-01-01T00:00:00Z"}`, `{"rate":"5/s"}`, `{"rate":"policy"}`,
		`{"ids":["id-0001"]}`, `{"filter":{"status":500,"class":"5xx"}}`, `{"all":true,"rate":"unlimited"}`, `[`, `{"rate":1}`, "\x00\xff"} {
		f.Add(seed)
	}
	fx := newFixture(f)
	paths := []string{"pause", "resume", "rate", "dead/replay", "dead/purge"}
	f.Fuzz(func(t *testing.T, body string) {
		if len(body) < 4 || strings.Contains(body, "SLUICEFUZZ") {
			body += "SLUICEFUZZ" // a marker that must not come back
		}
		for _, p := range paths {
			req := httptest.NewRequest("POST", "/v1/routes/orders/targets/inv/"+p, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			rec := httptest.NewRecorder()
			fx.server.Handler().ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s: %d %s", p, rec.Code, rec.Body)
			}
			var v map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Fatalf("%s: not JSON: %s", p, rec.Body)
			}
			if strings.Contains(rec.Body.String(), "SLUICEFUZZ") {
				t.Fatalf("%s: the error echoes the body: %s", p, rec.Body)
			}
		}
		// Whatever happened, resume and reset so the next input starts clean.
		fx.controls.Resume("orders", "inv")
		fx.controls.ResetRate("orders", "inv")
	})
}

// TestDeadLetterBusyIsTriedAgain: a letter held for a moment (its death
// still being recorded) is replayed after a few tries; one that stays
// busy is reported as an error, not as done.
func TestDeadLetterBusyIsTriedAgain(t *testing.T) {
	f := newFixture(t)
	f.dead.busy = 2
	code, body := f.call(t, "POST", "/v1/routes/orders/targets/inv/dead/replay", token, `{"ids":["id-0001"]}`)
	if code != 200 || body["replayed"].(float64) != 1 {
		t.Fatalf("replay of a busy letter: %d %v", code, body)
	}
	f.dead.busy = 100
	code, body = f.call(t, "POST", "/v1/routes/orders/targets/inv/dead/purge", token, `{"ids":["id-0002"]}`)
	if code != 500 || body["errors"] == nil {
		t.Fatalf("purge of a letter that stays busy: %d %v", code, body)
	}
	if f.dead.busy != 100-changeTries {
		t.Errorf("%d tries, want %d", 100-f.dead.busy, changeTries)
	}
}

// fakeMessages lists n synthetic rows, made as they are read.
type fakeMessages struct{ n uint64 }

func (f fakeMessages) List(route string, flt store.Filter, after uint64, limit int, fn func(*store.Row) bool) (uint64, bool, error) {
	if route != "orders" {
		return after, false, ErrNoTarget
	}
	last := after
	for seq := after + 1; seq <= f.n && int(seq-after) <= limit; seq++ {
		last = seq
		row := store.Row{ID: store.NewID(seq, [8]byte{1}), Key: fmt.Sprintf("k-%d", seq), AcceptedAt: time.Unix(int64(seq), 0),
			Targets: []store.RowTarget{{Target: "inv", Phase: store.Delivered, Status: 200, Attempts: 1, At: time.Unix(int64(seq), 0)}}}
		if !fn(&row) {
			return last, false, nil
		}
	}
	return last, last >= f.n, nil
}

func (f fakeMessages) Counts(route string, since, until time.Time) ([]store.Counts, error) {
	return []store.Counts{{Target: "inv", Accepted: f.n, Delivered: f.n}}, nil
}

func (f fakeMessages) Replay(ctx context.Context, route, target string, seq uint64, at time.Time) error {
	return nil
}

// TestExportStreamsFlat: an NDJSON export of many rows streams them with a
// live heap that does not grow with the rows (the rows would take ~100 MB).
func TestExportStreamsFlat(t *testing.T) {
	n := uint64(500_000)
	if testing.Short() {
		n = 50_000
	}
	f := newFixture(t)
	resp := getExport(t, Config{Token: token, Node: f.node, Controls: f.controls, Messages: fakeMessages{n}, Metrics: NewMetrics(nil), Logger: quiet})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	live := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := live()
	var most uint64
	sc := bufio.NewScanner(resp.Body)
	var rows uint64
	var last string
	for sc.Scan() {
		last = sc.Text()
		if strings.HasPrefix(last, `{"id"`) {
			rows++
		}
		if rows%(n/10) == 0 {
			most = max(most, live())
		}
	}
	if rows != n || last != fmt.Sprintf(`{"end":true,"rows":%d}`, n) {
		t.Fatalf("%d rows, last line %s", rows, last)
	}
	if most > base+16<<20 {
		t.Fatalf("the live heap grew from %d to %d MiB during the export", base>>20, most>>20)
	}
	t.Logf("%d rows; live heap %d MiB before, at most %d MiB during", rows, base>>20, most>>20)
}

// unsupportedMessages is an engine that cannot list, count or replay.
type unsupportedMessages struct{}

func (unsupportedMessages) List(string, store.Filter, uint64, int, func(*store.Row) bool) (uint64, bool, error) {
	return 0, false, fmt.Errorf("%w: listing is not supported here", ErrUnsupported)
}

func (unsupportedMessages) Counts(string, time.Time, time.Time) ([]store.Counts, error) {
	return nil, fmt.Errorf("%w: counting is not supported here", ErrUnsupported)
}

func (unsupportedMessages) Replay(context.Context, string, string, uint64, time.Time) error {
	return fmt.Errorf("%w: replay is not supported here", ErrUnsupported)
}

// TestMessagesUnsupported: an engine that cannot list, count or replay
// answers 501 not_supported, not 404 (the route exists).
func TestMessagesUnsupported(t *testing.T) {
	f := newFixture(t)
	s, err := New(Config{Token: token, Node: f.node, Controls: f.controls, Messages: unsupportedMessages{}, Metrics: NewMetrics(nil), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/routes/orders/messages"},
		{"GET", "/v1/routes/orders/counts"},
		{"POST", "/v1/routes/orders/targets/inv/replay"},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(`{"state":"dead","rate":"10/s"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(string(body), `"not_supported"`) {
			t.Errorf("%s %s: %d %s, want 501 not_supported", c.method, c.path, resp.StatusCode, body)
		}
	}
}

// failingReplay lists like fakeMessages and fails every replay.
type failingReplay struct {
	fakeMessages
	tries *int
}

func (f failingReplay) Replay(context.Context, string, string, uint64, time.Time) error {
	*f.tries++
	return errors.New("disk on fire")
}

// TestReplayStopsOnFailingStore: a replay by filter whose every replay
// fails stops after maxReplayErrors messages, answers 500 with those
// errors and done false, rather than trying every matching message.
func TestReplayStopsOnFailingStore(t *testing.T) {
	f := newFixture(t)
	tries := 0
	s, err := New(Config{Token: token, Node: f.node, Controls: f.controls, Messages: failingReplay{fakeMessages{1000}, &tries}, Metrics: NewMetrics(nil), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/v1/routes/orders/targets/inv/replay", strings.NewReader(`{"state":"delivered"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res ReplayResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 500 || res.Done || res.Replayed != 0 || len(res.Errors) != maxReplayErrors {
		t.Fatalf("%d %+v, want 500, %d errors, not done", resp.StatusCode, res, maxReplayErrors)
	}
	if tries != maxReplayErrors*changeTries {
		t.Fatalf("%d replays tried, want %d (%d messages, %d tries each)", tries, maxReplayErrors*changeTries, maxReplayErrors, changeTries)
	}
}

// getExport serves an admin API with cfg and asks it for the route orders'
// NDJSON export; the answer's body is closed at the test's end.
func getExport(t *testing.T, cfg Config) *http.Response {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest("GET", srv.URL+"/v1/routes/orders/messages?format=ndjson", nil)
	req.Header.Set("Authorization", "Bearer "+cfg.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}
