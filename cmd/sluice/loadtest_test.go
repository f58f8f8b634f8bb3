package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/loadtest"
	"github.com/sluice-proxy/sluice/policies"
)

// TestLoadtestRunAgainstProxy: `sluice loadtest run` offers a burst to a
// sluice running in this process, plays its target with
// --downstream-listen, waits for the drain and verifies: nothing lost, and
// the downstream never got more than rate + burst requests in a second.
func TestLoadtestRunAgainstProxy(t *testing.T) {
	const rate, burst = 200, 20
	dsAddr := freePort(t)
	pol, err := policies.Parse("lt.yaml", fmt.Appendf(nil, `
listen: 127.0.0.1:0
storage: { dir: %q, fsync: always }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    idempotency_header: Idempotency-Key
    targets:
      - name: inventory
        url: http://%s
        rate: %d/s
        burst: %d
        concurrency: 8
        retry: { max_attempts: 50, initial: 50ms, max: 500ms }
`, t.TempDir(), dsAddr, rate, burst))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pol.Listen)
	if err != nil {
		t.Fatal(err)
	}
	n, err := startNode(pol, ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer n.stop(10 * time.Second)

	reportDir := filepath.Join(t.TempDir(), "report")
	var stdout, stderr bytes.Buffer
	code := run([]string{"loadtest", "run",
		"--target", "http://" + ln.Addr().String() + "/api/orders",
		// --workers 600: every request of the run may be in flight at once, so
		// a slow machine (fsync always under -race, CPU steal) makes requests
		// slower but never drops one at the generator as saturated.
		"--rate", "600", "--duration", "1s", "--idempotency", "--workers", "600",
		"--downstream-listen", dsAddr, "--downstream-rate", fmt.Sprint(rate), "--downstream-burst", fmt.Sprint(burst),
		"--drain-timeout", "15s", "--report-dir", reportDir, "--json", "--progress", "plain",
	}, &stdout, &stderr)
	t.Logf("stderr:\n%s", stderr.String())
	if code != 0 {
		t.Fatalf("exit %d; stdout:\n%s", code, stdout.String())
	}
	var r loadtest.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, stdout.String())
	}
	v, d := r.Verdict, r.Downstream
	if r.Load.Accepted != 600 || v.Accepted != 600 || v.Delivered != 600 || v.Lost != 0 || r.Unverified {
		t.Errorf("accepted %d, verdict %+v, unverified %v; want 600 accepted and delivered, 0 lost; load %+v",
			r.Load.Accepted, v, r.Unverified, r.Load)
	}
	// sluice kept to its rate: not only the 2xx answers (which the mock
	// caps itself) but every request it sent.
	if v.PeakPerSecond > rate+burst || d.MaxAttemptsPerSecond > rate+burst {
		t.Errorf("peak %d/s delivered, %d/s of all requests; limit %d/s", v.PeakPerSecond, d.MaxAttemptsPerSecond, rate+burst)
	}
	if len(r.Series) < 3 || r.Series[len(r.Series)-1].Backlog != 0 {
		t.Errorf("series does not end drained: %+v", r.Series)
	}
	// Progress went to stderr as plain lines (no terminal here), then the
	// paths of the report files.
	if !strings.Contains(stderr.String(), "sent       600/600") || !strings.Contains(stderr.String(), "drain ETA") {
		t.Errorf("no plain progress lines on stderr")
	}
	for _, f := range []string{"report.html", "report.json", "chart.png"} {
		p := filepath.Join(reportDir, f)
		if st, err := os.Stat(p); err != nil || st.Size() == 0 || !strings.Contains(stderr.String(), p) {
			t.Errorf("%s: %v (and named in the output?)", p, err)
		}
	}
}

// Without a downstream the run cannot verify delivery: it says so, and
// does not fail for it.
func TestLoadtestRunUnverified(t *testing.T) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Sluice-Id", fmt.Sprint(time.Now().UnixNano()))
		w.WriteHeader(http.StatusAccepted)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	code := run([]string{"loadtest", "run", "--target", "http://" + ln.Addr().String() + "/x",
		"--spike", "50,4,200ms,200ms", "--duration", "600ms", "--progress", "off"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"spike 50/s, x4 at 200ms for 200ms", "accepted       60 ", "not observed", "verdict          PASS"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestLoadtestRunUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("- { rate: 10, for: 1s }\n- { rate: x, for: 1s }\n"), 0o644)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--target is required"},
		{[]string{"--target", "http://127.0.0.1:1/"}, "one of --rate, --spike or --scenario is required"},
		{[]string{"--target", "http://127.0.0.1:1/", "--rate", "5", "--spike", "1,2,1s,1s"}, "exclude one another"},
		{[]string{"--target", "http://127.0.0.1:1/", "--spike", "1,2,1s"}, "want BASE,FACTOR,AT,FOR"},
		{[]string{"--target", "http://127.0.0.1:1/", "--scenario", bad}, bad + ":2: steps[1].rate"},
		{[]string{"--target", "http://127.0.0.1:1/", "--rate", "5", "--downstream-rate", "5"}, "--downstream-rate needs --downstream-listen"},
		{[]string{"--target", "http://127.0.0.1:1/", "--rate", "5", "--downstream-listen", "10.0.0.1:80"}, "must be a loopback address"},
		{[]string{"--target", "ftp://x", "--rate", "5"}, "want http://host:port/path"},
		{[]string{"--target", "http://127.0.0.1:1/", "--rate", "5", "--progress", "fancy"}, "want auto, bars, plain or off"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"loadtest", "run"}, tt.args...), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tt.args, code, stderr.String(), tt.want)
		}
	}
}

// `sluice loadtest downstream` serves until SIGINT, then prints what it got.
func TestLoadtestDownstreamCommand(t *testing.T) {
	addr := freePort(t)
	cmd := exec.Command(sluiceBin, "loadtest", "downstream", "--listen", addr, "--rate", "1000")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.Contains(lines.Text(), "listening on http://"+addr) {
		t.Fatalf("first line %q", lines.Text())
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for i, id := range []string{"a", "b", "a", ""} {
		req, _ := http.NewRequest("POST", "http://"+addr+"/api/orders", strings.NewReader("{}"))
		if id != "" {
			req.Header.Set("X-Sluice-Id", id)
		}
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, err, resp)
		}
		resp.Body.Close()
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var rest strings.Builder
	for lines.Scan() {
		rest.WriteString(lines.Text() + "\n")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, rest.String())
	}
	for _, want := range []string{"requests       4", "4 answered 2xx: 2 distinct X-Sluice-Ids, 1 duplicates, 1 without an id", "capacity       1000/s, burst 100"} {
		if !strings.Contains(rest.String(), want) {
			t.Errorf("stats lack %q:\n%s", want, rest.String())
		}
	}
}

// `sluice demo`, small: the burst drains, nothing is lost, and the report
// files are written where it says.
func TestDemoWritesReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rep")
	out, err := exec.Command(sluiceBin, "demo", "--orders", "400", "--capacity", "200", "--report-dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"lost 0, duplicates 0", "verdict          PASS", "backlog       0", "report  " + filepath.Join(dir, "report.html")} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	png, err := os.ReadFile(filepath.Join(dir, "chart.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("chart.png: %v", err)
	}
}
