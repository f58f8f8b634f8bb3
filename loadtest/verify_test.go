package loadtest

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2025, 11, 25, 10, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func dels(ms ...int) []Delivery {
	var d []Delivery
	for _, m := range ms {
		d = append(d, Delivery{At: at(m)})
	}
	return d
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name      string
		accepted  map[string]time.Time
		delivered map[string][]Delivery
		perSecond []int
		want      Verdict
	}{
		{
			name: "empty",
			want: Verdict{},
		},
		{
			name:      "all delivered once",
			accepted:  map[string]time.Time{"a": at(0), "b": at(10)},
			delivered: map[string][]Delivery{"a": dels(100), "b": dels(510)},
			perSecond: []int{2},
			want: Verdict{
				Accepted: 2, Delivered: 2, PeakPerSecond: 2,
				DrainTime: ms(510),
				EndToEnd:  LatencySummary{Count: 2, P50: ms(100), P90: ms(500), P99: ms(500), Max: ms(500)},
			},
		},
		{
			name:      "lost, earliest accepted first",
			accepted:  map[string]time.Time{"a": at(0), "z": at(1), "y": at(2), "x": at(2)},
			delivered: map[string][]Delivery{"a": dels(50), "y": {}},
			want: Verdict{
				Accepted: 4, Delivered: 1, Lost: 3, LostIDs: []string{"z", "x", "y"},
				DrainTime: ms(50),
				EndToEnd:  LatencySummary{Count: 1, P50: ms(50), P90: ms(50), P99: ms(50), Max: ms(50)},
			},
		},
		{
			name:      "duplicates count extra deliveries, first one counts for delay",
			accepted:  map[string]time.Time{"a": at(0), "b": at(0)},
			delivered: map[string][]Delivery{"a": dels(300, 100, 200), "b": dels(20, 20)},
			want: Verdict{
				Accepted: 2, Delivered: 2, Duplicates: 3,
				DrainTime: ms(100),
				EndToEnd:  LatencySummary{Count: 2, P50: ms(20), P90: ms(100), P99: ms(100), Max: ms(100)},
			},
		},
		{
			name:      "unexpected ids and requests without id",
			accepted:  map[string]time.Time{"a": at(0)},
			delivered: map[string][]Delivery{"a": dels(10), "ghost": dels(20, 30), "": dels(5, 6, 7)},
			perSecond: []int{1, 6, 0},
			want: Verdict{
				Accepted: 1, Delivered: 1, Unexpected: 1, Duplicates: 1, NoID: 3, PeakPerSecond: 6,
				DrainTime: ms(10),
				EndToEnd:  LatencySummary{Count: 1, P50: ms(10), P90: ms(10), P99: ms(10), Max: ms(10)},
			},
		},
		{
			name:      "delivery before the ack reached the client is clamped at 0",
			accepted:  map[string]time.Time{"a": at(100)},
			delivered: map[string][]Delivery{"a": dels(90)},
			want: Verdict{
				Accepted: 1, Delivered: 1,
				EndToEnd: LatencySummary{Count: 1},
			},
		},
		{
			name:      "nothing delivered: no drain time",
			accepted:  map[string]time.Time{"a": at(0)},
			perSecond: []int{0, 0},
			want:      Verdict{Accepted: 1, Lost: 1, LostIDs: []string{"a"}},
		},
		{
			name:     "queue delay from X-Sluice-Enqueued-At of the first delivery",
			accepted: map[string]time.Time{"a": at(5), "b": at(5)},
			delivered: map[string][]Delivery{
				"a": {{At: at(400), EnqueuedAt: at(0)}, {At: at(100), EnqueuedAt: at(0)}},
				"b": dels(50), // no header: not in QueueDelay
			},
			want: Verdict{
				Accepted: 2, Delivered: 2, Duplicates: 1,
				DrainTime:  ms(95),
				EndToEnd:   LatencySummary{Count: 2, P50: ms(45), P90: ms(95), P99: ms(95), Max: ms(95)},
				QueueDelay: LatencySummary{Count: 1, P50: ms(100), P90: ms(100), P99: ms(100), Max: ms(100)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Verify(tt.accepted, tt.delivered, tt.perSecond)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Verify:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestVerifyLostIDsCapped(t *testing.T) {
	accepted := map[string]time.Time{}
	for i := range 50 {
		accepted[fmt.Sprintf("id-%02d", i)] = at(i)
	}
	v := Verify(accepted, nil, nil)
	if v.Lost != 50 || len(v.LostIDs) != maxLostIDs {
		t.Fatalf("Lost %d, %d LostIDs; want 50, %d", v.Lost, len(v.LostIDs), maxLostIDs)
	}
	if v.LostIDs[0] != "id-00" || v.LostIDs[maxLostIDs-1] != "id-19" {
		t.Errorf("LostIDs = %v, want id-00 .. id-19", v.LostIDs)
	}
}

func TestSummarizePercentiles(t *testing.T) {
	// 1..100 ms: nearest rank gives exactly the q-th value.
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, ms(i))
	}
	want := LatencySummary{Count: 100, P50: ms(50), P90: ms(90), P99: ms(99), Max: ms(100)}
	if got := summarize(d); got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (LatencySummary{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
}
