package loadtest

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is the outcome of one scheduled send.
type Result struct {
	Seq     uint64        `json:"seq"`     // 1 for the first request of a run
	Sent    time.Time     `json:"sent"`    // when the request went out (or was dropped)
	Latency time.Duration `json:"latency"` // until the response, or the error
	Status  int           `json:"status"`  // HTTP status; 0 when Err is set
	ID      string        `json:"id"`      // X-Sluice-Id of the response, if any
	Err     error         `json:"-"`       // transport error, or ErrSaturated
}

// LatencySummary is a distribution in a few numbers.
type LatencySummary struct {
	Count              int
	P50, P90, P99, Max time.Duration
}

// RecorderStats is a copy of what a Recorder has counted so far.
type RecorderStats struct {
	// Started and Stopped bound the time Generate offered load; zero if the
	// Recorder was fed by something else.
	Started, Stopped time.Time

	Offered   uint64 // every scheduled send, dropped ones included
	Sent      uint64 // sends that went out
	Dropped   uint64 // sends not made because all workers were busy
	Accepted  uint64 // 2xx answers (sluice answers 202)
	MissingID uint64 // 202 answers without X-Sluice-Id: a contract violation
	Errors    uint64 // transport errors (timeouts, refused connections, ...)
	IDs       int    // distinct accepted ids (an Idempotency-Key repeat gives an id again)
	LastAck   time.Time

	Codes      map[int]uint64    // answers by HTTP status
	ErrorKinds map[string]uint64 // transport errors by message, at most maxErrorKinds of them

	AckLatency LatencySummary // of 2xx answers

	OfferedSeries  Series // scheduled sends per second, by send time
	AcceptedSeries Series // 2xx answers per second, by the time they arrived
}

// OfferedRate is the offered load in requests per second over the run.
func (s RecorderStats) OfferedRate() float64 {
	return perSecond(s.Offered, s.Stopped.Sub(s.Started))
}

// AcceptedRate is the rate of 2xx answers, from the start of the run to the
// last of them.
func (s RecorderStats) AcceptedRate() float64 {
	return perSecond(s.Accepted, s.LastAck.Sub(s.Started))
}

func perSecond(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// maxErrorKinds bounds the error breakdown; a flood of distinct messages
// is counted under "other".
const maxErrorKinds = 32

// Histogram range: 1µs to 1 minute with 3 significant digits, ~100 KiB.
const (
	histMin = 1
	histMax = int64(time.Minute / time.Microsecond)
)

// A Recorder collects Results. It is safe for concurrent use. It keeps
// counts and one entry per accepted id, not the results themselves.
type Recorder struct {
	mu       sync.Mutex
	stats    RecorderStats
	hist     *hdrhistogram.Histogram // ack latency of 2xx answers, µs
	accepted map[string]time.Time    // id -> first ack time
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{
		stats: RecorderStats{
			Codes:      map[int]uint64{},
			ErrorKinds: map[string]uint64{},
		},
		hist:     hdrhistogram.New(histMin, histMax, 3),
		accepted: map[string]time.Time{},
	}
}

// Record counts one result.
func (r *Recorder) Record(res Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &r.stats
	s.Offered++
	s.OfferedSeries.Add(res.Sent, 1)
	switch {
	case errors.Is(res.Err, ErrSaturated):
		s.Dropped++
		return
	case res.Err != nil:
		s.Sent++
		s.Errors++
		kind := res.Err.Error()
		if _, ok := s.ErrorKinds[kind]; !ok && len(s.ErrorKinds) >= maxErrorKinds {
			kind = "other"
		}
		s.ErrorKinds[kind]++
		return
	}
	s.Sent++
	s.Codes[res.Status]++
	// Any 2xx is an acknowledgement, so that the same harness can measure a
	// server other than sluice (which answers 202) side by side.
	if res.Status < 200 || res.Status > 299 {
		return
	}
	ack := res.Sent.Add(res.Latency)
	s.Accepted++
	s.AcceptedSeries.Add(ack, 1)
	if ack.After(s.LastAck) {
		s.LastAck = ack
	}
	// RecordValue fails only above histMax; such a value is kept as histMax
	// so that it still weighs on the high percentiles.
	us := min(max(res.Latency.Microseconds(), histMin), histMax)
	_ = r.hist.RecordValue(us)
	if res.ID == "" {
		if res.Status == 202 {
			s.MissingID++ // sluice's contract: a 202 always names its id
		}
		return
	}
	if _, seen := r.accepted[res.ID]; !seen {
		r.accepted[res.ID] = ack
	}
}

// span widens the run window; Generate calls it when it starts and stops.
func (r *Recorder) span(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stats.Started.IsZero() || t.Before(r.stats.Started) {
		r.stats.Started = t
	}
	if t.After(r.stats.Stopped) {
		r.stats.Stopped = t
	}
}

// Snapshot returns a copy of the counts so far; cheap enough for a
// progress line every second.
func (r *Recorder) Snapshot() RecorderStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.IDs = len(r.accepted)
	s.Codes = maps.Clone(r.stats.Codes)
	s.ErrorKinds = maps.Clone(r.stats.ErrorKinds)
	s.OfferedSeries = r.stats.OfferedSeries.clone()
	s.AcceptedSeries = r.stats.AcceptedSeries.clone()
	s.AckLatency = summarizeHist(r.hist)
	return s
}

// Accepted returns a copy of the accepted ids with the time each was first
// acknowledged: the input of Verify.
func (r *Recorder) Accepted() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.accepted)
}

// AcceptedIDs returns the accepted ids, sorted: the input of WaitDrained.
func (r *Recorder) AcceptedIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.accepted))
}

// Histogram returns a copy of the ack latency histogram (values in µs), for
// reports that draw the whole distribution.
func (r *Recorder) Histogram() *hdrhistogram.Histogram {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hist.Clone()
}

func summarizeHist(h *hdrhistogram.Histogram) LatencySummary {
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	return LatencySummary{
		Count: int(h.TotalCount()),
		P50:   us(h.ValueAtQuantile(50)),
		P90:   us(h.ValueAtQuantile(90)),
		P99:   us(h.ValueAtQuantile(99)),
		Max:   us(h.Max()),
	}
}
