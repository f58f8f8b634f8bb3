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

// Point is one second of a run: what was offered, accepted (202s) and
// delivered (2xx at the downstream) during it.
type Point struct {
	Second    int `json:"t"` // since Report.Start
	Offered   int `json:"offered"`
	Accepted  int `json:"accepted"`
	Delivered int `json:"delivered"`
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
	for sec := first; sec < end; sec++ {
		t := time.Unix(sec, 0)
		r.Series = append(r.Series, Point{
			Second:    int(sec - first),
			Offered:   load.OfferedSeries.At(t),
			Accepted:  load.AcceptedSeries.At(t),
			Delivered: ds.Arrivals.At(t),
		})
	}
	return r
}

// Problems lists the broken guarantees: lost or duplicated messages, 202s
// without an id, and a delivery peak above the downstream's limit. An
// empty list is a pass.
func (r Report) Problems() []string {
	var p []string
	v := r.Verdict
	if v.Lost > 0 {
		p = append(p, fmt.Sprintf("lost %d accepted", v.Lost))
	}
	if v.Duplicates > 0 {
		p = append(p, fmt.Sprintf("duplicates %d", v.Duplicates))
	}
	if r.Load.MissingID > 0 {
		p = append(p, fmt.Sprintf("202 without X-Sluice-Id %d", r.Load.MissingID))
	}
	if limit := r.peakLimit(); limit > 0 && v.PeakPerSecond > limit {
		p = append(p, fmt.Sprintf("peak delivery %d/s above the downstream limit %d/s", v.PeakPerSecond, limit))
	}
	return p
}

// peakLimit is the most a token bucket lets through in one second: a
// second's worth of tokens plus a full bucket. 0 when unlimited.
func (r Report) peakLimit() int {
	if r.Downstream.Rate <= 0 {
		return 0
	}
	return int(math.Ceil(r.Downstream.Rate)) + r.Downstream.Burst
}

// WriteText prints a short aligned summary, ending with the verdict:
// PASS, or FAIL and the Problems.
func (r Report) WriteText(w io.Writer) error {
	var b bytes.Buffer // one Write, so one error to return
	l, d, v := r.Load, r.Downstream, r.Verdict
	row := func(name, format string, args ...any) {
		fmt.Fprintf(&b, "  %-15s%s\n", name, fmt.Sprintf(format, args...))
	}

	b.WriteString("load\n")
	row("target", "%s %s", r.Run.Method, r.Run.URL)
	schedule := r.Run.Pacer
	if r.Run.Duration > 0 {
		schedule += " for " + r.Run.Duration.String()
	}
	if r.Run.MaxRequests > 0 {
		schedule += fmt.Sprintf(", at most %d requests", r.Run.MaxRequests)
	}
	row("schedule", "%s, %d workers", schedule, r.Run.Workers)
	row("offered", "%d (%.1f/s), dropped %d (generator saturated)", l.Offered, l.OfferedRate(), l.Dropped)
	row("accepted", "%d (%.1f/s), %d ids", l.Accepted, l.AcceptedRate(), l.IDs)
	row("ack latency", "%s", fmtLatency(l.AckLatency))
	row("status codes", "%s", fmtCounts(l.Codes))
	if l.Errors == 0 {
		row("errors", "0")
	} else {
		row("errors", "%d (%s)", l.Errors, fmtCounts(l.ErrorKinds))
	}

	b.WriteString("downstream\n")
	capacity := "unlimited"
	if d.Rate > 0 {
		capacity = fmt.Sprintf("%g/s, burst %d", d.Rate, d.Burst)
	}
	if d.Concurrency > 0 {
		capacity += fmt.Sprintf(", concurrency %d", d.Concurrency)
	}
	row("capacity", "%s", capacity)
	delivered := fmt.Sprintf("%d of %d accepted; lost %d, duplicates %d, unexpected %d",
		v.Delivered, v.Accepted, v.Lost, v.Duplicates, v.Unexpected)
	if v.NoID > 0 {
		delivered += fmt.Sprintf(", without id %d", v.NoID)
	}
	row("delivered", "%s", delivered)
	if len(v.LostIDs) > 0 {
		row("lost ids", "%s", strings.Join(v.LostIDs, " "))
	}
	row("rejected", "%d (429 over rate %d, 503 over concurrency %d, 503 injected %d)",
		d.Rejected, d.Throttled, d.Overloaded, d.Failed)
	peak := fmt.Sprintf("%d/s", v.PeakPerSecond)
	if limit := r.peakLimit(); limit > 0 {
		peak += fmt.Sprintf(" (limit %d/s)", limit)
	}
	row("peak delivery", "%s, max concurrent %d", peak, d.MaxConcurrent)
	row("time to drain", "%s", fmtDuration(v.DrainTime))
	row("end-to-end", "%s", fmtLatency(v.EndToEnd))
	row("queue delay", "%s", fmtLatency(v.QueueDelay))

	verdict := "PASS"
	if p := r.Problems(); len(p) > 0 {
		verdict = "FAIL: " + strings.Join(p, "; ")
	}
	fmt.Fprintf(&b, "%-17s%s\n", "verdict", verdict)
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
