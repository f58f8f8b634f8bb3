package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/logproto"
)

// needShipper skips the test when a log shipper's file is missing, unless
// CI is set (.ci/run sets it and installs them): then its absence is a
// failure.
func needShipper(t *testing.T, what string, globs ...string) string {
	t.Helper()
	for _, g := range globs {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return m[0]
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (%s); .ci/run installs it", what, strings.Join(globs, ", "))
	}
	t.Skipf("%s is not installed (%s): apt-get install rsyslog rsyslog-elasticsearch, or run .ci/run", what, strings.Join(globs, ", "))
	return ""
}

// esStore is a mock Elasticsearch: it keeps documents by _id, as the real
// one does, and answers some items 429 the first time it sees them.
type esStore struct {
	mu       sync.Mutex
	docs     map[string]string // _id -> document
	seen     map[string]int    // _id -> times sent
	rejected map[string]bool   // _ids answered 429 once
	reject   func(doc string) bool
	bad      []string // requests that were not a valid bulk request
}

func (s *esStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	index, ok := logproto.BulkIndex(r.URL.Path)
	if !ok || r.Method != http.MethodPost {
		s.mu.Lock()
		s.bad = append(s.bad, r.Method+" "+r.URL.Path)
		s.mu.Unlock()
		http.Error(w, `{"error":"not a bulk request"}`, 400)
		return
	}
	docs, err := logproto.ParseBulk(body, index)
	if err != nil {
		s.mu.Lock()
		s.bad = append(s.bad, err.Error())
		s.mu.Unlock()
		http.Error(w, `{"error":"bad bulk body"}`, 400)
		return
	}
	s.mu.Lock()
	items := make([]logproto.ItemReply, len(docs))
	for i, d := range docs {
		var id string
		if json.Unmarshal(d.ID, &id) != nil || id == "" {
			s.bad = append(s.bad, "a document without _id")
		}
		s.seen[id]++
		items[i] = logproto.ItemReply{Op: d.Op, Index: d.Index, ID: d.ID, Status: 201}
		if !s.rejected[id] && s.reject(string(d.Body)) {
			s.rejected[id] = true
			items[i].Status, items[i].Type, items[i].Reason = 429, "es_rejected_execution_exception", "rejected execution (queue capacity 200)"
			continue
		}
		s.docs[id] = string(d.Body)
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(logproto.AppendBulkReply(nil, time.Millisecond, items))
}

// numbers returns how many times each line number is held by the store,
// counting distinct _ids.
func (s *esStore) numbers(t *testing.T) map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := map[int]int{}
	for _, doc := range s.docs {
		var d struct{ Msg string }
		var n int
		if json.Unmarshal([]byte(doc), &d) != nil {
			t.Errorf("stored document is not the template's JSON: %q", doc)
			continue
		}
		if _, err := fmt.Sscanf(d.Msg, "line %d", &n); err != nil {
			t.Errorf("stored document %q has no line number", doc)
			continue
		}
		got[n]++
	}
	return got
}

// shipper starts a log shipper that reads logFile and sends it to sluice's
// elasticsearch route on port; dir is its own directory. check is called at
// the end to look at the shipper's own error output.
type shipper func(t *testing.T, dir, logFile, port string) (cmd *exec.Cmd, check func(t *testing.T))

// TestRsyslogThroughSluice runs the real rsyslogd (imfile reading a file of
// numbered lines, omelasticsearch in bulk mode) through sluice; see
// shipThroughSluice. rsyslog sets each document's _id from the line's file
// offset (bulkid), so that a batch it sends again after the kill (its reply
// lost) overwrites the same document instead of adding one; it retries
// forever (action.resumeRetryCount -1), as it must with any Elasticsearch to
// lose nothing while the server is down.
func TestRsyslogThroughSluice(t *testing.T) {
	rsyslogd := needShipper(t, "rsyslogd", "/usr/sbin/rsyslogd")
	needShipper(t, "rsyslog's omelasticsearch", "/usr/lib/*/rsyslog/omelasticsearch.so", "/usr/lib/rsyslog/omelasticsearch.so")
	shipThroughSluice(t, func(t *testing.T, dir, logFile, port string) (*exec.Cmd, func(t *testing.T)) {
		cmd, errFile, out := rsyslog(t, rsyslogd, dir, logFile, port, 256)
		return cmd, func(t *testing.T) {
			if b, err := os.ReadFile(errFile); err == nil && len(b) > 0 {
				t.Errorf("rsyslog's error file is not empty:\n%.2000s", b)
			}
			if strings.Contains(out.String(), "error in elasticsearch reply") {
				t.Errorf("rsyslog rejected a reply:\n%.2000s", out.String())
			}
		}
	})
}

// serveHTTP serves h on a new listener on 127.0.0.1 until the test ends
// and returns its address (host:port).
func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// rsyslog writes an rsyslog configuration in dir that follows logFile and
// sends each line as a document, in _bulk requests of up to batch lines,
// to 127.0.0.1:port, retrying without end. It returns the command that runs
// it, the file where rsyslog writes the batches refused, and its output.
func rsyslog(t *testing.T, bin, dir, logFile, port string, batch int) (*exec.Cmd, string, *testutil.Buffer) {
	t.Helper()
	errFile := filepath.Join(dir, "es-errors.log")
	must(t, os.Mkdir(filepath.Join(dir, "work"), 0o700))
	conf := filepath.Join(dir, "rsyslog.conf")
	must(t, os.WriteFile(conf, fmt.Appendf(nil, `global(workDirectory=%q)
module(load="imfile")
module(load="omelasticsearch")
template(name="doc" type="string" string="{\"msg\":\"%%msg:::json%%\"}")
template(name="docid" type="string" string="app-%%$!metadata!fileoffset%%")
input(type="imfile" File=%q Tag="app" addMetadata="on" ruleset="es")
ruleset(name="es") {
  action(type="omelasticsearch" server="127.0.0.1" serverport="%s" template="doc" searchIndex="app"
         bulkmode="on" bulkid="docid" dynbulkid="on" errorfile=%q
         action.resumeRetryCount="-1" action.resumeInterval="1"
         queue.type="LinkedList" queue.size="100000" queue.dequeueBatchSize="%d")
}
`, filepath.Join(dir, "work"), logFile, port, errFile, batch), 0o644))
	cmd := exec.Command(bin, "-n", "-f", conf, "-i", filepath.Join(dir, "rsyslog.pid"))
	out := &testutil.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, errFile, out
}

// TestSyslogNGThroughSluice runs the real syslog-ng 3.38 (a file source,
// the elasticsearch-http() destination) through sluice; see
// shipThroughSluice. syslog-ng conflicts with rsyslog as a package, so
// .ci/run unpacks it into $SYSLOG_NG_ROOT (default
// /var/cache/sluice-ci/syslog-ng). The _id is the SHA-1 of the line
// (custom_id), so that a batch sent again after the kill writes nothing
// twice; time-reopen(1) and retries(1000) keep it retrying while sluice is
// down (the defaults, 60 s and 3 tries, would wait, then drop).
func TestSyslogNGThroughSluice(t *testing.T) {
	root := os.Getenv("SYSLOG_NG_ROOT")
	if root == "" {
		root = "/var/cache/sluice-ci/syslog-ng"
	}
	bin := needShipper(t, "syslog-ng (unpacked by .ci/run)", filepath.Join(root, "usr/sbin/syslog-ng"))
	needShipper(t, "syslog-ng's http module", filepath.Join(root, "usr/lib/syslog-ng/3.*/libhttp.so"))
	needShipper(t, "syslog-ng's elasticsearch-http()", filepath.Join(root, "usr/share/syslog-ng/include/scl/elasticsearch/elastic-http.conf"))
	mods, _ := filepath.Glob(filepath.Join(root, "usr/lib/syslog-ng/3.*"))
	shipThroughSluice(t, func(t *testing.T, dir, logFile, port string) (*exec.Cmd, func(t *testing.T)) {
		conf := filepath.Join(dir, "syslog-ng.conf")
		must(t, os.WriteFile(conf, fmt.Appendf(nil, `@version: 3.38
@define include-path %q
@include "scl/elasticsearch/elastic-http.conf"
options { time-reopen(1); };
source s_app { file(%q follow-freq(0.1) flags(no-parse)); };
destination d_es {
  elasticsearch-http(url("http://127.0.0.1:%s/_bulk") index("app") type("") custom_id("$(sha1 $MSG)")
    template("$(format-json msg=$MSG)") batch_lines(256) batch_timeout(100) retries(1000) workers(2));
};
log { source(s_app); destination(d_es); };
`, filepath.Join(root, "usr/share/syslog-ng/include"), logFile, port), 0o644))
		cmd := exec.Command(bin, "-F", "-e", "--no-caps", "-f", conf, "--module-path="+mods[0],
			"-R", filepath.Join(dir, "persist"), "-p", filepath.Join(dir, "pid"), "-c", filepath.Join(dir, "ctl"))
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(root, "usr/lib/syslog-ng"))
		out := &testutil.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		return cmd, func(t *testing.T) {
			// A 4xx or 5xx from sluice is logged as "Server returned with a
			// 4XX (client errors) status code" (and dropped or retried).
			if strings.Contains(out.String(), "status code") || strings.Contains(out.String(), "Error parsing") {
				t.Errorf("syslog-ng reported errors:\n%.3000s", out.String())
			}
		}
	})
}

// shipThroughSluice runs a real shipper reading a file of numbered lines,
// through sluice's elasticsearch route, to a mock store (elasticsearch-bulk
// delivery) that answers some items 429. sluice is killed with SIGKILL
// mid-stream, while it holds a backlog, and restarted. Every line reaches
// the store exactly once by its number (one _id per number); the rejected
// items are sent again; the shipper reports no error.
func shipThroughSluice(t *testing.T, start shipper) {
	store := &esStore{docs: map[string]string{}, seen: map[string]int{}, rejected: map[string]bool{},
		reject: func(doc string) bool { // lines whose number ends in 3
			var d struct{ Msg string }
			var n int
			json.Unmarshal([]byte(doc), &d)
			fmt.Sscanf(d.Msg, "line %d", &n)
			return n%10 == 3
		}}
	storeAddr := serveHTTP(t, store)

	dir := t.TempDir()
	addr := freePort(t)
	_, port, _ := net.SplitHostPort(addr)
	policy := filepath.Join(dir, "policy.yaml")
	must(t, os.WriteFile(policy, fmt.Appendf(nil, `listen: %q
storage: { dir: %q, fsync: always, segment_bytes: 256KiB }
routes:
  - name: logs
    match: { path: / }
    protocol: elasticsearch
    max_body: 10MiB
    targets:
      - name: store
        url: http://%s
        protocol: elasticsearch-bulk
        rate: 10/s
        concurrency: 2
        batch: { max_messages: 100, max_wait: 50ms }
        retry: { max_attempts: 50, initial: 50ms, max: 500ms }
`, addr, filepath.Join(dir, "data"), storeAddr), 0o644))

	logFile := filepath.Join(dir, "app.log")
	f, err := os.Create(logFile)
	must(t, err)
	defer f.Close()

	p := startSluice(t, policy, addr)
	shipDir := filepath.Join(dir, "shipper")
	must(t, os.Mkdir(shipDir, 0o700))
	cmd, check := start(t, shipDir, logFile, port)
	must(t, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	const n = 4000
	var written atomic.Int64
	write := func(from, to int) {
		for i := from; i <= to; i++ {
			fmt.Fprintf(f, "line %06d %s\n", i, strings.Repeat("x", 100))
			written.Store(int64(i))
			if i%40 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	write(1, n/2)
	// Kill sluice once the store holds part of the stream, while the
	// shipper is still sending.
	waitUntil(t, 30*time.Second, "the store holds 500 lines", func() bool { return len(store.numbers(t)) >= 500 })
	go write(n/2+1, n)
	time.Sleep(300 * time.Millisecond)
	must(t, p.cmd.Process.Signal(syscall.SIGKILL))
	p.cmd.Wait()
	held, wrote := len(store.numbers(t)), written.Load()
	time.Sleep(500 * time.Millisecond)
	startSluice(t, policy, addr)
	// The target's rate (10 batches of 100 a second) is below the file's
	// (2000 lines a second): at the kill, sluice held a backlog.
	t.Logf("killed sluice with %d lines written and %d in the store", wrote, held)
	if held >= int(wrote) {
		t.Errorf("the store held every line written (%d) at the kill: nothing was at stake", wrote)
	}

	waitUntil(t, 60*time.Second, "every line in the store", func() bool { return len(store.numbers(t)) == n })
	got := store.numbers(t)
	for i := 1; i <= n; i++ {
		if got[i] != 1 {
			t.Errorf("line %d is in the store %d times", i, got[i])
		}
	}
	store.mu.Lock()
	resent, rejected := 0, 0
	for id, c := range store.seen {
		if store.rejected[id] {
			rejected++
			if c < 2 {
				t.Errorf("%s was answered 429 and never sent again", id)
			}
		} else if c > 1 {
			resent++
		}
	}
	if rejected < n/20 {
		t.Errorf("only %d items were answered 429", rejected)
	}
	if len(store.bad) > 0 {
		t.Errorf("the store got bad requests: %q", store.bad[:min(5, len(store.bad))])
	}
	store.mu.Unlock()
	t.Logf("%d items answered 429 and retried; %d others sent more than once (in flight at the kill, or sent again by the shipper)", rejected, resent)
	check(t)
}

var waitUntil = testutil.WaitFor

var must = testutil.Must

// TestRsyslogBackPressure: sluice's storage is smaller than what rsyslog
// sends at once, so requests find it full until the target has drained
// enough. rsyslog writes a batch refused whole to its error file, whatever
// the status, so sluice holds such a request (up to 10 s) until there is
// room: every line arrives once and the error file stays empty. (Before
// sluice waited, 512 of 3000 lines arrived; the rest were in the error
// file.)
func TestRsyslogBackPressure(t *testing.T) {
	rsyslogd := needShipper(t, "rsyslogd", "/usr/sbin/rsyslogd")
	needShipper(t, "rsyslog's omelasticsearch", "/usr/lib/*/rsyslog/omelasticsearch.so", "/usr/lib/rsyslog/omelasticsearch.so")
	store := &esStore{docs: map[string]string{}, seen: map[string]int{}, rejected: map[string]bool{}, reject: func(string) bool { return false }}
	storeAddr := serveHTTP(t, store)

	// A proxy in front of sluice counts its 429s, so the test knows the
	// back-pressure happened.
	dir := t.TempDir()
	addr := freePort(t)
	policy := filepath.Join(dir, "policy.yaml")
	must(t, os.WriteFile(policy, fmt.Appendf(nil, `listen: %q
storage: { dir: %q, fsync: always, segment_bytes: 64KiB, max_bytes: 320KiB }
routes:
  - name: logs
    match: { path: / }
    protocol: elasticsearch
    max_body: 10MiB
    targets:
      - name: store
        url: http://%s
        protocol: elasticsearch-bulk
        rate: 10/s
        concurrency: 1
        batch: { max_messages: 50, max_wait: 20ms }
`, addr, filepath.Join(dir, "data"), storeAddr), 0o644))
	startSluice(t, policy, addr)
	var refused, slowest atomic.Int64
	front := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequest(r.Method, "http://"+addr+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		start := time.Now()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if took := int64(time.Since(start)); took > slowest.Load() {
			slowest.Store(took) // racy max; good enough to tell 0 from seconds
		}
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode == 429 {
			refused.Add(1)
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	_, port, _ := net.SplitHostPort(front)

	logFile := filepath.Join(dir, "app.log")
	const n = 3000
	var lines bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&lines, "line %06d %s\n", i, strings.Repeat("y", 200))
	}
	must(t, os.WriteFile(logFile, lines.Bytes(), 0o644))
	cmd, errFile, out := rsyslog(t, rsyslogd, dir, logFile, port, 512)
	must(t, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	deadline := time.Now().Add(60 * time.Second)
	for len(store.numbers(t)) < n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	got := store.numbers(t)
	if len(got) < n {
		ef, _ := os.ReadFile(errFile)
		t.Fatalf("%d of %d lines in the store after 60s; sluice answered 429 %d times; rsyslog said:\n%.3000s\nerror file:\n%.2000s", len(got), n, refused.Load(), out.String(), ef)
	}
	for i := 1; i <= n; i++ {
		if got[i] != 1 {
			t.Errorf("line %d is in the store %d times", i, got[i])
		}
	}
	if refused.Load() == 0 && time.Duration(slowest.Load()) < 200*time.Millisecond {
		t.Errorf("no request waited or was refused: the storage limit was not reached, nothing was tested")
	}
	t.Logf("sluice answered 429 %d times; the slowest request took %v", refused.Load(), time.Duration(slowest.Load()))
	if b, err := os.ReadFile(errFile); err == nil && len(b) > 0 {
		t.Errorf("rsyslog's error file is not empty:\n%.2000s", b)
	}
}
