package loadtest

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	for _, res := range []Result{
		{Seq: 1, Sent: at(0), Latency: ms(1), Status: 202, ID: "b"},
		{Seq: 2, Sent: at(100), Latency: ms(2), Status: 202, ID: "a"},
		{Seq: 3, Sent: at(1100), Latency: ms(3), Status: 202, ID: "a"}, // an idempotent repeat
		{Seq: 4, Sent: at(1200), Latency: ms(4), Status: 202},          // no id
		{Seq: 5, Sent: at(1300), Latency: ms(5), Status: 503},
		{Seq: 6, Sent: at(1400), Err: ErrSaturated},
		{Seq: 7, Sent: at(2100), Latency: time.Second, Err: errors.New("timeout")},
	} {
		r.Record(res)
	}
	s := r.Snapshot()
	want := RecorderStats{
		Offered: 7, Sent: 6, Dropped: 1, Accepted: 4, MissingID: 1, Errors: 1, IDs: 2,
		LastAck:        at(1204),
		Codes:          map[int]uint64{202: 4, 503: 1},
		ErrorKinds:     map[string]uint64{"timeout": 1},
		OfferedSeries:  Series{Start: time.Unix(t0.Unix(), 0), Counts: []int{2, 4, 1}},
		AcceptedSeries: Series{Start: time.Unix(t0.Unix(), 0), Counts: []int{2, 2}},
	}
	// The histogram keeps 3 significant digits: compare within 0.1%.
	lat := s.AckLatency
	if lat.Count != 4 || !near(lat.P50, ms(2)) || !near(lat.P90, ms(4)) || !near(lat.P99, ms(4)) || !near(lat.Max, ms(4)) {
		t.Errorf("AckLatency = %+v, want 2ms 4ms 4ms 4ms", lat)
	}
	s.AckLatency = LatencySummary{}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("Snapshot:\n got %+v\nwant %+v", s, want)
	}
	if got, want := r.Accepted(), map[string]time.Time{"a": at(102), "b": at(1)}; !reflect.DeepEqual(got, want) {
		t.Errorf("Accepted() = %v, want %v (the first ack of a)", got, want)
	}
	if got := r.AcceptedIDs(); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("AcceptedIDs() = %v", got)
	}

	// A snapshot is a copy.
	s.Codes[202] = 0
	s.OfferedSeries.Counts[0] = 0
	if s2 := r.Snapshot(); s2.Codes[202] != 4 || s2.OfferedSeries.Counts[0] != 2 {
		t.Error("Snapshot shares state with the Recorder")
	}
}

func TestRecorderErrorKindsBounded(t *testing.T) {
	r := NewRecorder()
	for i := range maxErrorKinds + 10 {
		r.Record(Result{Sent: t0, Err: fmt.Errorf("error %d", i)})
	}
	s := r.Snapshot()
	if len(s.ErrorKinds) != maxErrorKinds+1 || s.ErrorKinds["other"] != 10 {
		t.Errorf("%d kinds, other %d; want %d, 10", len(s.ErrorKinds), s.ErrorKinds["other"], maxErrorKinds+1)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	r := NewRecorder()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 500 {
				r.Record(Result{Sent: at(i), Latency: ms(1), Status: 202, ID: fmt.Sprintf("%d-%d", w, i)})
				if i%100 == 0 {
					r.Snapshot()
				}
			}
		})
	}
	wg.Wait()
	if s := r.Snapshot(); s.Accepted != 4000 || s.IDs != 4000 || s.AckLatency.Count != 4000 {
		t.Errorf("Accepted %d IDs %d histogram %d, want 4000", s.Accepted, s.IDs, s.AckLatency.Count)
	}
}

func TestRecorderLatencyBeyondHistogram(t *testing.T) {
	r := NewRecorder()
	r.Record(Result{Sent: t0, Latency: time.Hour, Status: 202, ID: "slow"})
	if s := r.Snapshot(); s.AckLatency.Count != 1 || s.AckLatency.Max < 59*time.Second {
		t.Errorf("AckLatency = %+v, want the value kept at the top of the range", s.AckLatency)
	}
}

func near(got, want time.Duration) bool {
	return got >= want-want/1000 && got <= want+want/1000
}

// A server other than sluice answers 200 without ids: its answers count as
// accepted (so the harness can compare it), and are not a contract breach.
func TestRecorderCountsAny2xx(t *testing.T) {
	r := NewRecorder()
	now := time.Now()
	r.Record(Result{Seq: 1, Sent: now, Latency: time.Millisecond, Status: 200})
	r.Record(Result{Seq: 2, Sent: now, Latency: time.Millisecond, Status: 202})
	r.Record(Result{Seq: 3, Sent: now, Latency: time.Millisecond, Status: 503})
	st := r.Snapshot()
	if st.Accepted != 2 || st.MissingID != 1 || st.Sent != 3 {
		t.Fatalf("accepted %d missing-id %d sent %d; want 2, 1 (the 202 only), 3", st.Accepted, st.MissingID, st.Sent)
	}
}
