package loadtest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// sampleReport is a small run: 6 offered over 2s, 5 accepted, 4 delivered.
func sampleReport() Report {
	cfg := GenConfig{URL: "http://127.0.0.1:8080/api/orders", Pacer: ConstantPacer{PerSecond: 3}, Duration: 2 * time.Second}
	load := RecorderStats{
		Started: at(0), Stopped: at(2000), LastAck: at(2000),
		Offered: 6, Sent: 5, Dropped: 1, Accepted: 5, IDs: 5, Errors: 0,
		Codes:          map[int]uint64{202: 5},
		ErrorKinds:     map[string]uint64{},
		AckLatency:     LatencySummary{Count: 5, P50: 1234567, P90: ms(3), P99: ms(7), Max: ms(8)},
		OfferedSeries:  Series{Start: at(0), Counts: []int{3, 3}},
		AcceptedSeries: Series{Start: at(0), Counts: []int{2, 3}},
	}
	ds := DownstreamStats{
		Rate: 2, Burst: 1, Concurrency: 4,
		Requests: 6, Received: 5, Rejected: 1, Throttled: 1,
		Arrivals: Series{Start: at(1000), Counts: []int{2, 0, 3}}, MaxPerSecond: 3, MaxConcurrent: 2,
		Attempts: Series{Start: at(1000), Counts: []int{3, 0, 3}}, MaxAttemptsPerSecond: 3,
	}
	v := Verdict{
		Accepted: 5, Delivered: 4, Lost: 1, Duplicates: 1, LostIDs: []string{"msg-5"},
		PeakPerSecond: 3, DrainTime: 2500 * time.Millisecond,
		EndToEnd: LatencySummary{Count: 4, P50: ms(900), P90: 1500 * time.Millisecond, P99: 1500 * time.Millisecond, Max: 1500 * time.Millisecond},
	}
	return NewReport(cfg, load, ds, v)
}

func TestReportText(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "report.txt")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if buf.String() != string(want) {
		t.Errorf("WriteText:\n%s\nwant (%s, -update to rewrite):\n%s", buf.String(), golden, want)
	}
}

func TestReportSeries(t *testing.T) {
	r := sampleReport()
	want := []Point{
		{Second: 0, Offered: 3, Accepted: 2, Backlog: 2},
		{Second: 1, Offered: 3, Accepted: 3, Delivered: 2, Backlog: 3},
		{Second: 2, Backlog: 3},
		{Second: 3, Delivered: 3, Backlog: 0}, // 5 accepted, 5 delivered (one a duplicate)
	}
	if !r.Start.Equal(t0) || !reflect.DeepEqual(r.Series, want) {
		t.Errorf("Start %v Series %+v, want %v %+v", r.Start, r.Series, t0, want)
	}
	if empty := NewReport(GenConfig{}, RecorderStats{}, DownstreamStats{}, Verdict{}); empty.Series != nil {
		t.Errorf("empty run: Series %v", empty.Series)
	}
}

func TestReportProblems(t *testing.T) {
	r := sampleReport()
	got := strings.Join(r.Problems(), "; ")
	for _, want := range []string{"lost 1 accepted", "duplicates 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("Problems() = %q, want %q in it", got, want)
		}
	}
	r.Verdict.PeakPerSecond = 4 // limit: 2/s + burst 1
	if p := r.Problems(); !strings.Contains(strings.Join(p, ";"), "above the downstream limit 3/s") {
		t.Errorf("Problems() = %q, want the peak", p)
	}
	r = sampleReport()
	r.Verdict.Lost, r.Verdict.Duplicates = 0, 0
	if p := r.Problems(); len(p) != 0 {
		t.Errorf("Problems() = %q, want none", p)
	}
}

func TestReportJSON(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(back.Verdict, r.Verdict) || !reflect.DeepEqual(back.Series, r.Series) ||
		back.Run != r.Run || back.Load.Codes[202] != 5 || back.Downstream.Throttled != 1 {
		t.Errorf("round trip lost data:\n%s", buf.String())
	}
}
