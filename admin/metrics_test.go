package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestObserveCounts: accepted, refused by code, a downstream's own refusal
// by class, and every request in the latency histogram.
func TestObserveCounts(t *testing.T) {
	m := NewMetrics(nil)
	m.Observe("orders", 202, "", time.Millisecond)
	m.Observe("orders", 200, "", time.Millisecond) // spillover, forwarded
	m.Observe("orders", 503, "storage_full", time.Millisecond)
	m.Observe("orders", 422, "", time.Millisecond) // spillover: the target's own answer
	want := `
# HELP sluice_route_accepted_total Requests accepted by a buffer or spillover route: stored and answered 202, or forwarded at once (spillover).
# TYPE sluice_route_accepted_total counter
sluice_route_accepted_total{route="orders"} 2
# HELP sluice_route_refused_total Requests a buffer or spillover route did not accept, by reason (the error code of the reply, or downstream_4xx for a spillover target's own refusal).
# TYPE sluice_route_refused_total counter
sluice_route_refused_total{reason="downstream_4xx",route="orders"} 1
sluice_route_refused_total{reason="storage_full",route="orders"} 1
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "sluice_route_accepted_total", "sluice_route_refused_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.ack); n != 1 {
		t.Errorf("%d histogram series, want 1", n)
	}
}

// BenchmarkObserve is what the metrics add to each buffered request.
func BenchmarkObserve(b *testing.B) {
	m := NewMetrics(nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Observe("orders", 202, "", 300*time.Microsecond)
		}
	})
}
