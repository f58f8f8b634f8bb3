package loadtest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"html"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// demoLikeReport is a burst of 3000 in one second into a proxy whose
// downstream takes 300/s: the shape `sluice demo` draws.
func demoLikeReport() Report {
	const capacity, burst = 300, 30
	start := at(0)
	offered := Series{Start: start, Counts: []int{2400, 600}}
	accepted := Series{Start: start, Counts: []int{2390, 610}}
	arr := Series{Start: start}
	left := 3000
	for i := 0; left > 0; i++ {
		n := min(left, capacity)
		if i == 0 {
			n = capacity + burst - 40
		}
		arr.Add(start.Add(time.Duration(i)*time.Second), n)
		left -= n
	}
	load := RecorderStats{
		Started: start, Stopped: at(1000), LastAck: at(1100),
		Offered: 3000, Sent: 3000, Accepted: 3000, IDs: 3000,
		Codes:          map[int]uint64{202: 3000},
		ErrorKinds:     map[string]uint64{},
		AckLatency:     LatencySummary{Count: 3000, P50: ms(4), P90: ms(9), P99: ms(21), Max: ms(40)},
		OfferedSeries:  offered,
		AcceptedSeries: accepted,
	}
	ds := DownstreamStats{
		Rate: capacity, Burst: burst, Concurrency: 0,
		Requests: 3000, Received: 3000, IDs: 3000,
		Arrivals: arr, MaxPerSecond: arr.Max(), MaxConcurrent: 12,
		Attempts: arr, MaxAttemptsPerSecond: arr.Max(),
	}
	v := Verdict{
		Accepted: 3000, Delivered: 3000, PeakPerSecond: arr.Max(), DrainTime: 9800 * time.Millisecond,
		EndToEnd:   LatencySummary{Count: 3000, P50: 4 * time.Second, P90: 8 * time.Second, P99: 9 * time.Second, Max: 9800 * time.Millisecond},
		QueueDelay: LatencySummary{Count: 3000, P50: 4 * time.Second, P90: 8 * time.Second, P99: 9 * time.Second, Max: 9790 * time.Millisecond},
	}
	cfg := GenConfig{URL: "http://127.0.0.1:8080/api/orders", Pacer: ConstantPacer{PerSecond: 3000}, MaxRequests: 3000, Duration: 2 * time.Second}
	return NewReport(cfg, load, ds, v)
}

func TestWriteChartPNG(t *testing.T) {
	// Rendering is slow under -race (about a second a chart): two will do.
	for name, r := range map[string]Report{
		"demo":  demoLikeReport(),
		"empty": NewReport(GenConfig{}, RecorderStats{}, DownstreamStats{}, Verdict{}),
	} {
		var buf bytes.Buffer
		if err := r.WriteChart(&buf); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.HasPrefix(buf.Bytes(), []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("%s: not a PNG: % x", name, buf.Bytes()[:min(8, buf.Len())])
		}
		img, err := png.Decode(&buf)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() != chartWidthPx || b.Dy() != chartHeightPx {
			t.Errorf("%s: %v, want %dx%d", name, b, chartWidthPx, chartHeightPx)
		}
	}
}

func TestChartPanels(t *testing.T) {
	r := demoLikeReport()
	rates, backlog, err := r.chartPlots()
	if err != nil {
		t.Fatal(err)
	}
	if rates.Y.Label.Text != "requests per second" || backlog.Y.Label.Text != "backlog (requests)" ||
		backlog.X.Label.Text != "time since the start of the run (s)" || rates.Title.Text == "" {
		t.Errorf("labels: %q %q %q %q", rates.Title.Text, rates.Y.Label.Text, backlog.Y.Label.Text, backlog.X.Label.Text)
	}
	if rates.X.Max != backlog.X.Max || rates.X.Max != float64(len(r.Series)) {
		t.Errorf("time axes differ: %g and %g for %d seconds", rates.X.Max, backlog.X.Max, len(r.Series))
	}
	r.Unverified = true
	if _, backlog, _ := r.chartPlots(); !strings.Contains(backlog.Title.Text, "unknown") {
		t.Errorf("unverified backlog title %q", backlog.Title.Text)
	}
}

func TestNiceTicks(t *testing.T) {
	labels := func(lo, hi float64) []string {
		var l []string
		for _, tk := range niceTicks(lo, hi) {
			if tk.Label != "" {
				l = append(l, tk.Label)
			}
		}
		return l
	}
	for _, tt := range []struct {
		lo, hi float64
		want   string
	}{
		{0, 11, "0 2 4 6 8 10"},
		{0, 2484, "0 500 1000 1500 2000"},
		{0, 3, "0 1 2 3"},
		{0, 1, "0 1"},
	} {
		if got := strings.Join(labels(tt.lo, tt.hi), " "); got != tt.want {
			t.Errorf("niceTicks(%g, %g) = %s, want %s", tt.lo, tt.hi, got, tt.want)
		}
	}
}

// externalRef finds what would make a browser reach the network: an
// attribute or CSS url() that points at http(s) or a protocol-relative
// address, an @import, or a script.
var externalRef = regexp.MustCompile(`(?i)(src|href|action|poster|srcset)\s*=\s*["']?\s*(https?:|//)|url\(\s*["']?\s*(https?:|//)|@import|<script|<link|<iframe`)

func TestWriteHTMLSelfContained(t *testing.T) {
	r := demoLikeReport()
	r.Verdict.Lost, r.Verdict.LostIDs = 2, []string{"id-<1>", "id-2"} // escaped, and shown
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	if m := externalRef.FindString(page); m != "" {
		t.Errorf("the page refers to something outside itself: %q", m)
	}
	// The only http(s):// text is the target URL, shown as text.
	rest := strings.ReplaceAll(page, r.Run.URL, "")
	if i := strings.Index(rest, "http"); i >= 0 && regexp.MustCompile(`https?://`).MatchString(rest) {
		t.Errorf("http(s):// outside the target URL: %q", rest[max(0, i-40):min(len(rest), i+60)])
	}
	// The chart is inline, and what a browser decodes from the attribute
	// is a PNG.
	m := regexp.MustCompile(`<img src="data:image/png;base64,([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no inline PNG chart")
	}
	raw, err := base64.StdEncoding.DecodeString(html.UnescapeString(m[1]))
	if err != nil {
		t.Fatalf("inline chart: %v", err)
	}
	if _, err := png.Decode(bytes.NewReader(raw)); err != nil {
		t.Errorf("inline chart: %v", err)
	}
	if strings.Contains(page, "id-<1>") || !strings.Contains(page, "id-&lt;1&gt;") {
		t.Error("lost ids are not escaped")
	}
	// The numbers of the text report are all in the page.
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, s := range r.sections() {
		for _, row := range s.Rows {
			if !strings.Contains(page, html.EscapeString(row.Value)) {
				t.Errorf("row %q: %q not in the page", row.Name, row.Value)
			}
		}
	}
	for _, want := range []string{
		"FAIL", "lost 2 accepted", // the verdict
		"4ms", "9ms", "21ms", "40ms", // ack latency percentiles
		"9.8s",                 // time to drain
		"330/s", "limit 330/s", // peak vs capacity
		"<td class=\"num\">2400</td>", // the per-second table
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "report")
	r := demoLikeReport()
	f, err := r.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if f.Dir != dir || f.HTML != filepath.Join(dir, "report.html") || f.JSON != filepath.Join(dir, "report.json") || f.Chart != filepath.Join(dir, "chart.png") {
		t.Errorf("Files = %+v", f)
	}
	png, err := os.ReadFile(f.Chart)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("chart.png: %v, % x", err, png[:min(8, len(png))])
	}
	var back Report
	if b, err := os.ReadFile(f.JSON); err != nil || json.Unmarshal(b, &back) != nil || back.Verdict.Delivered != 3000 || len(back.Series) != len(r.Series) {
		t.Errorf("report.json: %v %+v", err, back.Verdict)
	}
	if b, err := os.ReadFile(f.HTML); err != nil || !bytes.Contains(b, []byte("PASS")) {
		t.Errorf("report.html: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("dir has %d entries, want 3 (no temporary files left)", len(entries))
	}
}
