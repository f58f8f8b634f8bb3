package loadtest

import (
	"math"
	"slices"
	"strings"
	"time"
)

// maxLostIDs bounds Verdict.LostIDs: enough to look a few up, not a dump.
const maxLostIDs = 20

// Verdict joins what sluice accepted with what the downstream received.
type Verdict struct {
	Accepted   int // distinct ids acknowledged with 202
	Delivered  int // accepted ids answered 2xx at least once; Accepted = Delivered + Lost
	Lost       int // accepted ids never delivered
	Duplicates int // deliveries beyond the first, summed over all ids
	// Unexpected counts delivered ids that were never accepted. It can be
	// legitimate (sluice stored the request but its 202 was lost on the way
	// back), so it is reported, not failed.
	Unexpected int
	NoID       int // 2xx answers without X-Sluice-Id: not sent by sluice

	LostIDs []string // the first maxLostIDs lost ids, earliest accepted first

	PeakPerSecond int           // most 2xx arrivals in one wall-clock second
	DrainTime     time.Duration // from the first accept to the last first delivery

	// EndToEnd is accept -> first delivery, per accepted id delivered. It is
	// clamped at 0: a drainer can deliver before the 202 reaches the client.
	EndToEnd LatencySummary
	// QueueDelay is X-Sluice-Enqueued-At -> first delivery, per delivered id
	// that carried the header: sluice's own view, without the ack path.
	QueueDelay LatencySummary
}

// Verify is a pure function: accepted maps each id to the time its 202
// arrived (Recorder.Accepted), delivered maps each id to its 2xx deliveries
// (Downstream.Arrivals), and perSecond counts 2xx arrivals per wall-clock
// second (DownstreamStats.Arrivals.Counts).
func Verify(accepted map[string]time.Time, delivered map[string][]Delivery, perSecond []int) Verdict {
	v := Verdict{Accepted: len(accepted), PeakPerSecond: Series{Counts: perSecond}.Max()}

	var endToEnd, queue []time.Duration
	var firstAccept, lastFirst time.Time
	for id, dels := range delivered {
		if id == "" {
			v.NoID += len(dels)
			continue
		}
		if len(dels) == 0 {
			continue // an id with no deliveries was not delivered
		}
		v.Duplicates += len(dels) - 1
		first := slices.MinFunc(dels, func(a, b Delivery) int { return a.At.Compare(b.At) })
		if !first.EnqueuedAt.IsZero() {
			queue = append(queue, max(0, first.At.Sub(first.EnqueuedAt)))
		}
		acc, ok := accepted[id]
		if !ok {
			v.Unexpected++
			continue
		}
		v.Delivered++
		endToEnd = append(endToEnd, max(0, first.At.Sub(acc)))
		if first.At.After(lastFirst) {
			lastFirst = first.At
		}
	}

	var lost []string
	for id, t := range accepted {
		if firstAccept.IsZero() || t.Before(firstAccept) {
			firstAccept = t
		}
		if len(delivered[id]) == 0 {
			lost = append(lost, id)
		}
	}
	v.Lost = len(lost)
	slices.SortFunc(lost, func(a, b string) int {
		if c := accepted[a].Compare(accepted[b]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	v.LostIDs = lost[:min(len(lost), maxLostIDs)]

	if v.Delivered > 0 {
		v.DrainTime = max(0, lastFirst.Sub(firstAccept))
	}
	v.EndToEnd = summarize(endToEnd)
	v.QueueDelay = summarize(queue)
	return v
}

// summarize computes exact nearest-rank percentiles; it sorts d.
func summarize(d []time.Duration) LatencySummary {
	if len(d) == 0 {
		return LatencySummary{}
	}
	slices.Sort(d)
	rank := func(q float64) time.Duration {
		return d[int(math.Ceil(q*float64(len(d))))-1]
	}
	return LatencySummary{Count: len(d), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: d[len(d)-1]}
}
