package loadtest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// RunSummary is the part of a GenConfig that a report shows.
type RunSummary struct {
	URL         string        `json:"url"`
	Method      string        `json:"method"`
	Pacer       string        `json:"pacer"`
	Duration    time.Duration `json:"duration"`
	MaxRequests uint64        `json:"max_requests,omitempty"`
	Workers     int           `json:"workers"`
	Timeout     time.Duration `json:"timeout"`
}

// Point is one second of a run: what was offered, accepted (2xx) and
// delivered (2xx at the downstream) during it, and the backlog at its end.
type Point struct {
	Second    int `json:"t"` // since Report.Start
	Offered   int `json:"offered"`
	Accepted  int `json:"accepted"`
	Delivered int `json:"delivered"`
	// Backlog is accepted minus delivered since the start, at the end of
	// this second, never below 0 (a delivery can be counted before its
	// 202 arrives, and duplicates are deliveries too).
	Backlog int `json:"backlog"`
}

// Report is everything known about a run, ready to print. In JSON,
// durations are integer nanoseconds.
type Report struct {
	Run        RunSummary      `json:"run"`
	Load       RecorderStats   `json:"load"`
	Downstream DownstreamStats `json:"downstream"`
	Verdict    Verdict         `json:"verdict"`

	// Start is the first second of Series, which lines up offered, accepted
	// and delivered on one time axis for charts.
	Start  time.Time `json:"start"`
	Series []Point   `json:"series"`

	// Unverified says that no downstream was watched (a run against a
	// proxy whose targets are elsewhere): Downstream and Verdict are
	// empty, and lost and duplicates are unknown, not 0.
	Unverified bool `json:"unverified,omitempty"`
	// AllowDuplicates reports duplicate deliveries without failing the
	// run: at-least-once delivery allows them (attempts in flight at a
	// crash), always with the same Idempotency-Key.
	AllowDuplicates bool `json:"allow_duplicates,omitempty"`
}

// NewReport assembles a report; it aligns the per-second series.
func NewReport(cfg GenConfig, load RecorderStats, ds DownstreamStats, v Verdict) Report {
	cfg = cfg.withDefaults()
	r := Report{
		Run: RunSummary{
			URL: cfg.URL, Method: cfg.Method, Pacer: fmt.Sprint(cfg.Pacer),
			Duration: cfg.Duration, MaxRequests: cfg.MaxRequests,
			Workers: cfg.Workers, Timeout: cfg.Timeout,
		},
		Load: load, Downstream: ds, Verdict: v,
	}
	all := []Series{load.OfferedSeries, load.AcceptedSeries, ds.Arrivals}
	var first, end int64 // Unix seconds, end exclusive
	found := false
	for _, s := range all {
		if len(s.Counts) == 0 {
			continue
		}
		from, to := s.Start.Unix(), s.Start.Unix()+int64(len(s.Counts))
		if !found || from < first {
			first = from
		}
		end = max(end, to)
		found = true
	}
	if !found {
		return r
	}
	r.Start = time.Unix(first, 0)
	backlog := 0
	for sec := first; sec < end; sec++ {
		t := time.Unix(sec, 0)
		p := Point{
			Second:    int(sec - first),
			Offered:   load.OfferedSeries.At(t),
			Accepted:  load.AcceptedSeries.At(t),
			Delivered: ds.Arrivals.At(t),
		}
		backlog = max(0, backlog+p.Accepted-p.Delivered)
		p.Backlog = backlog
		r.Series = append(r.Series, p)
	}
	return r
}

// Problems lists the broken guarantees: lost messages, duplicates (unless
// AllowDuplicates), 202s without an id, a delivery peak above the
// downstream's limit, and a run in which every request failed. An empty
// list is a pass.
func (r Report) Problems() []string {
	var p []string
	v := r.Verdict
	if l := r.Load; l.Sent > 0 && l.Errors == l.Sent {
		p = append(p, fmt.Sprintf("all %d requests failed", l.Sent))
	}
	if v.Lost > 0 {
		p = append(p, fmt.Sprintf("lost %d accepted", v.Lost))
	}
	if v.Duplicates > 0 && !r.AllowDuplicates {
		p = append(p, fmt.Sprintf("duplicates %d", v.Duplicates))
	}
	if r.Load.MissingID > 0 {
		p = append(p, fmt.Sprintf("202 without X-Sluice-Id %d", r.Load.MissingID))
	}
	if limit := r.PeakLimit(); limit > 0 && v.PeakPerSecond > limit {
		p = append(p, fmt.Sprintf("peak delivery %d/s above the downstream limit %d/s", v.PeakPerSecond, limit))
	}
	return p
}

// Pass reports whether Problems is empty.
func (r Report) Pass() bool { return len(r.Problems()) == 0 }

// PeakLimit is the most a token bucket of the downstream's Rate and Burst
// lets through in one wall-clock second: a second's worth of tokens plus
// a full bucket. 0 when unlimited or not observed.
func (r Report) PeakLimit() int {
	if r.Unverified || r.Downstream.Rate <= 0 {
		return 0
	}
	return int(math.Ceil(r.Downstream.Rate)) + r.Downstream.Burst
}

// A section is a titled list of rows: what WriteText prints as aligned
// lines and WriteHTML as a table, so that both show the same numbers.
type section struct {
	Title string
	Rows  []row
}

type row struct{ Name, Value string }

func (s *section) add(name, format string, args ...any) {
	s.Rows = append(s.Rows, row{name, fmt.Sprintf(format, args...)})
}

func (r Report) sections() []section {
	l, d, v := r.Load, r.Downstream, r.Verdict

	load := section{Title: "load"}
	load.add("target", "%s %s", r.Run.Method, r.Run.URL)
	schedule := r.Run.Pacer
	if r.Run.Duration > 0 {
		schedule += " for " + r.Run.Duration.String()
	}
	if r.Run.MaxRequests > 0 {
		schedule += fmt.Sprintf(", at most %d requests", r.Run.MaxRequests)
	}
	load.add("schedule", "%s, %d workers", schedule, r.Run.Workers)
	load.add("offered", "%d (%.1f/s), dropped %d (generator saturated)", l.Offered, l.OfferedRate(), l.Dropped)
	load.add("accepted", "%d (%.1f/s), %d ids", l.Accepted, l.AcceptedRate(), l.IDs)
	load.add("ack latency", "%s", fmtLatency(l.AckLatency))
	load.add("status codes", "%s", fmtCounts(l.Codes))
	if l.Errors == 0 {
		load.add("errors", "0")
	} else {
		load.add("errors", "%d (%s)", l.Errors, fmtCounts(l.ErrorKinds))
	}

	down := section{Title: "downstream"}
	if r.Unverified {
		down.add("not observed", "delivery, lost and duplicates are unknown")
		return []section{load, down}
	}
	capacity := "unlimited"
	if d.Rate > 0 {
		capacity = fmt.Sprintf("%g/s, burst %d", d.Rate, d.Burst)
	}
	if d.Concurrency > 0 {
		capacity += fmt.Sprintf(", concurrency %d", d.Concurrency)
	}
	down.add("capacity", "%s", capacity)
	delivered := fmt.Sprintf("%d of %d accepted; lost %d, duplicates %d, unexpected %d",
		v.Delivered, v.Accepted, v.Lost, v.Duplicates, v.Unexpected)
	if v.Duplicates > 0 && r.AllowDuplicates {
		delivered += " (duplicates allowed: at least once)"
	}
	if v.NoID > 0 {
		delivered += fmt.Sprintf(", without id %d", v.NoID)
	}
	down.add("delivered", "%s", delivered)
	if len(v.LostIDs) > 0 {
		down.add("lost ids", "%s", strings.Join(v.LostIDs, " "))
	}
	down.add("rejected", "%d (429 over rate %d, 503 over concurrency %d, 503 injected %d)",
		d.Rejected, d.Throttled, d.Overloaded, d.Failed)
	peak := fmt.Sprintf("%d/s", v.PeakPerSecond)
	if limit := r.PeakLimit(); limit > 0 {
		peak += fmt.Sprintf(" (limit %d/s)", limit)
	}
	if d.MaxAttemptsPerSecond > 0 {
		peak += fmt.Sprintf(", all requests %d/s", d.MaxAttemptsPerSecond)
	}
	down.add("peak delivery", "%s, max concurrent %d", peak, d.MaxConcurrent)
	down.add("time to drain", "%s", fmtDuration(v.DrainTime))
	down.add("end-to-end", "%s", fmtLatency(v.EndToEnd))
	down.add("queue delay", "%s", fmtLatency(v.QueueDelay))
	return []section{load, down}
}

// verdictLine is "PASS", or "FAIL: " and the Problems.
func (r Report) verdictLine() string {
	if p := r.Problems(); len(p) > 0 {
		return "FAIL: " + strings.Join(p, "; ")
	}
	return "PASS"
}

// WriteText prints a short aligned summary, ending with the verdict:
// PASS, or FAIL and the Problems.
func (r Report) WriteText(w io.Writer) error {
	var b bytes.Buffer // one Write, so one error to return
	for _, s := range r.sections() {
		b.WriteString(s.Title + "\n")
		for _, row := range s.Rows {
			fmt.Fprintf(&b, "  %-15s%s\n", row.Name, row.Value)
		}
	}
	fmt.Fprintf(&b, "%-17s%s\n", "verdict", r.verdictLine())
	_, err := w.Write(b.Bytes())
	return err
}

// WriteJSON writes the whole report, indented.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func fmtLatency(s LatencySummary) string {
	if s.Count == 0 {
		return "-"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s",
		fmtDuration(s.P50), fmtDuration(s.P90), fmtDuration(s.P99), fmtDuration(s.Max))
}

// fmtDuration keeps about four significant digits.
func fmtDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d >= time.Microsecond:
		return d.Round(100 * time.Nanosecond).String()
	}
	return d.String()
}

// fmtCounts prints "k: n, ..." in key order, or "-" when empty.
func fmtCounts[K cmp.Ordered](m map[K]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%v: %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
