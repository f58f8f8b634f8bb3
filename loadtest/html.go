package loadtest

import (
	"bytes"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

//go:embed report.html.tmpl
var htmlSource string

var htmlTemplate = template.Must(template.New("report").Parse(htmlSource))

// htmlPage is what report.html.tmpl shows. Every number in it is
// formatted by the same functions as WriteText.
type htmlPage struct {
	Verdict   string
	Pass      bool
	Problems  []string
	Target    string
	Schedule  string
	Started   string
	Cards     []card
	Chart     template.URL // data:image/png;base64,...
	Latencies []latencyRow
	Sections  []section
	Series    []Point

	ChartWidth, ChartHeight int
}

type card struct {
	Name, Value, Note string
	Bad               bool
}

type latencyRow struct {
	Name               string
	Count              string
	P50, P90, P99, Max string
}

// WriteHTML writes a self-contained page: inline CSS, the chart as an
// inline PNG, no script, no reference to anything on the network. It
// holds the same numbers as WriteText, in tables, and the per-second
// series.
func (r Report) WriteHTML(w io.Writer) error {
	png, err := r.chartPNG()
	if err != nil {
		return err
	}
	page := r.htmlPage(png)
	var b bytes.Buffer
	if err := htmlTemplate.Execute(&b, page); err != nil {
		return fmt.Errorf("loadtest: html report: %w", err)
	}
	_, err = w.Write(b.Bytes())
	return err
}

func (r Report) htmlPage(png []byte) htmlPage {
	l, d, v := r.Load, r.Downstream, r.Verdict
	secs := r.sections()
	p := htmlPage{
		Problems:    r.Problems(),
		Sections:    secs,
		Series:      r.Series,
		Chart:       template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png)),
		ChartWidth:  chartWidthPx,
		ChartHeight: chartHeightPx,
	}
	p.Pass, p.Verdict = len(p.Problems) == 0, "FAIL"
	if p.Pass {
		p.Verdict = "PASS"
	}
	// The target and schedule rows lead the page rather than a table.
	for _, row := range secs[0].Rows {
		switch row.Name {
		case "target":
			p.Target = row.Value
		case "schedule":
			p.Schedule = row.Value
		}
	}
	if !l.Started.IsZero() {
		p.Started = l.Started.Format(time.RFC3339)
	}

	p.Cards = append(p.Cards,
		card{Name: "accepted (2xx)", Value: strconv.FormatUint(l.Accepted, 10),
			Note: fmt.Sprintf("of %d offered, %.1f/s", l.Offered, l.AcceptedRate())})
	lat := []latencyRow{latRow("ack latency", l.AckLatency)}
	if r.Unverified {
		p.Cards = append(p.Cards, card{Name: "delivered", Value: "not observed",
			Note: "lost and duplicates unknown"})
	} else {
		p.Cards = append(p.Cards,
			card{Name: "delivered", Value: strconv.Itoa(v.Delivered), Note: fmt.Sprintf("of %d accepted ids", v.Accepted)},
			card{Name: "lost", Value: strconv.Itoa(v.Lost), Bad: v.Lost > 0, Note: "accepted, never delivered"},
			card{Name: "duplicates", Value: strconv.Itoa(v.Duplicates), Bad: v.Duplicates > 0 && !r.AllowDuplicates,
				Note: "deliveries beyond the first"},
		)
		peak := card{Name: "peak delivery", Value: fmt.Sprintf("%d/s", v.PeakPerSecond), Note: "downstream unlimited"}
		if limit := r.PeakLimit(); limit > 0 {
			peak.Note = fmt.Sprintf("limit %d/s (capacity %g/s + burst %d)", limit, d.Rate, d.Burst)
			peak.Bad = v.PeakPerSecond > limit
		}
		p.Cards = append(p.Cards, peak,
			card{Name: "time to drain", Value: fmtDuration(v.DrainTime), Note: "first accept to last first delivery"},
			card{Name: "end-to-end p99", Value: orDash(v.EndToEnd.Count, fmtDuration(v.EndToEnd.P99)), Note: "accept to delivery"},
		)
		lat = append(lat, latRow("end-to-end", v.EndToEnd), latRow("queue delay", v.QueueDelay))
	}
	p.Latencies = lat
	return p
}

func latRow(name string, s LatencySummary) latencyRow {
	if s.Count == 0 {
		return latencyRow{Name: name, Count: "0", P50: "-", P90: "-", P99: "-", Max: "-"}
	}
	return latencyRow{Name: name, Count: strconv.Itoa(s.Count),
		P50: fmtDuration(s.P50), P90: fmtDuration(s.P90), P99: fmtDuration(s.P99), Max: fmtDuration(s.Max)}
}

func orDash(n int, s string) string {
	if n == 0 {
		return "-"
	}
	return s
}

// Files are the paths WriteFiles wrote.
type Files struct {
	Dir, HTML, JSON, Chart string
}

// File names inside a report directory.
const (
	HTMLFile  = "report.html"
	JSONFile  = "report.json"
	ChartFile = "chart.png"
)

// WriteFiles creates dir (and its parents) if needed and writes
// report.html, report.json and chart.png into it, replacing files of those
// names. Each file is written to a temporary name and renamed, so a reader
// never sees half a report.
func (r Report) WriteFiles(dir string) (Files, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, fmt.Errorf("loadtest: report: %w", err)
	}
	f := Files{Dir: dir, HTML: filepath.Join(dir, HTMLFile), JSON: filepath.Join(dir, JSONFile), Chart: filepath.Join(dir, ChartFile)}
	png, err := r.chartPNG()
	if err != nil {
		return Files{}, err
	}
	var html, js bytes.Buffer
	if err := htmlTemplate.Execute(&html, r.htmlPage(png)); err != nil {
		return Files{}, fmt.Errorf("loadtest: html report: %w", err)
	}
	if err := r.WriteJSON(&js); err != nil {
		return Files{}, fmt.Errorf("loadtest: json report: %w", err)
	}
	for path, data := range map[string][]byte{f.Chart: png, f.HTML: html.Bytes(), f.JSON: js.Bytes()} {
		if err := writeFileAtomic(path, data); err != nil {
			return Files{}, fmt.Errorf("loadtest: report: %w", err)
		}
	}
	return f, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
