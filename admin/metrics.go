package admin

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is the one place where sluice's Prometheus series are defined
// and registered. Request counts and the acknowledgement latency are
// counted as requests are answered (Observe); everything else is read from
// the node's State when /metrics is scraped, so the hot path pays nothing
// for it. Labels are route, target, reason, state, how: never an id.
type Metrics struct {
	reg      *prometheus.Registry
	accepted *prometheus.CounterVec
	refused  *prometheus.CounterVec
	ack      *prometheus.HistogramVec
	fsync    prometheus.Histogram
	routes   sync.Map // route name -> *routeSeries: skips the label lookup per request
}

// routeSeries are a route's series that every request touches.
type routeSeries struct {
	accepted prometheus.Counter
	ack      prometheus.Observer
}

// NewMetrics registers sluice's series, the Go runtime's and the process's;
// state is read at each scrape (nil: request counts only).
func NewMetrics(state func() State) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_route_accepted_total",
			Help: "Requests accepted by a buffer or spillover route: stored and answered 202, or forwarded at once (spillover).",
		}, []string{"route"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_route_refused_total",
			Help: "Requests a buffer or spillover route did not accept, by reason (the error code of the reply, or downstream_4xx for a spillover target's own refusal).",
		}, []string{"route", "reason"}),
		ack: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_route_ack_seconds",
			Help:    "Time from a request's arrival (headers and body read) to its reply on buffer and spillover routes, accepted or not.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route"}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_writer_fsync_seconds",
			Help:    "Duration of each fdatasync of a segment log or an outcome journal (the durability point of a group commit).",
			Buckets: []float64{.0001, .0002, .0005, .001, .002, .005, .01, .02, .05, .1, .25, 1},
		}),
	}
	m.reg.MustRegister(m.accepted, m.refused, m.ack, m.fsync,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if state != nil {
		m.reg.MustRegister(stateCollector{state})
	}
	return m
}

// ObserveSync records one fdatasync's duration (the store calls it).
func (m *Metrics) ObserveSync(d time.Duration) { m.fsync.Observe(d.Seconds()) }

// Registry returns the registry, for tests that gather it.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe counts one answered request; it implements proxy.Observer.
func (m *Metrics) Observe(route string, status int, code string, elapsed time.Duration) {
	rs, ok := m.routes.Load(route)
	if !ok {
		rs, _ = m.routes.LoadOrStore(route, &routeSeries{accepted: m.accepted.WithLabelValues(route), ack: m.ack.WithLabelValues(route)})
	}
	r := rs.(*routeSeries)
	r.ack.Observe(elapsed.Seconds())
	switch {
	case status >= 200 && status <= 299:
		r.accepted.Inc()
	case code != "":
		m.refused.WithLabelValues(route, code).Inc()
	default:
		m.refused.WithLabelValues(route, "downstream_"+strconv.Itoa(status/100)+"xx").Inc()
	}
}

var (
	rt  = []string{"route", "target"}
	rtd = func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(append([]string(nil), rt...), extra...), nil)
	}

	descBacklog   = rtd("sluice_target_backlog_messages", "Messages not yet finished for the target: pending, retrying and in flight.")
	descPending   = rtd("sluice_target_pending_messages", "Messages never attempted yet for the target.")
	descRetrying  = rtd("sluice_target_retrying_messages", "Messages waiting for a retry.")
	descInFlight  = rtd("sluice_target_in_flight_requests", "Requests open to the target now.")
	descExpiredT  = rtd("sluice_target_expired_total", "Messages the retention deleted before the target finished them, since start.")
	descOldest    = rtd("sluice_target_oldest_pending_age_seconds", "How long the oldest message the target has not finished has waited (0: none).")
	descRate      = rtd("sluice_target_rate_per_second", "Requests per second in force now (+Inf unlimited, 0 paused).")
	descRateWhy   = rtd("sluice_target_rate_reason", "1 for the reason of the rate in force: policy, window, adaptive, operator, paused (a window or rate 0) or operator_pause.", "reason")
	descPaused    = rtd("sluice_target_operator_paused", "1 while an operator's pause is in force.")
	descBreaker   = rtd("sluice_target_breaker_state", "1 for the circuit breaker's state: closed, open or half-open.", "state")
	descETA       = rtd("sluice_target_drain_eta_seconds", "Seconds until the backlog is delivered at the rate in force; +Inf while paused with no end.")
	descDelivered = rtd("sluice_target_delivered_total", "Messages delivered (2xx) since start.")
	descRetried   = rtd("sluice_target_retried_total", "Attempts that failed and were rescheduled, since start.")
	descDead      = rtd("sluice_target_dead_total", "Messages that became dead letters since start.")
	descOutcomes  = rtd("sluice_target_outcomes_total", "Messages delivered, retried or dead since start, by the class of the last attempt's status (none: no answer: timeout, connection failure, damaged record).", "outcome", "class")
	descDeadNow   = rtd("sluice_target_dead_letters", "Dead letters in the target's list now (counted up to 100000).")
	descAccepted  = rtd("sluice_target_accepted_messages", "Messages the store holds (or remembers as expired) for the target: the sum of sluice_target_messages over its states (recounted when older than 50 times what counting took, 1 s to 5 min).")
	descMessages  = rtd("sluice_target_messages", "Messages the store holds for the target by state: delivered, dead, expired, purged, queued, in_flight, retrying, parked (recounted when older than 50 times what counting took, 1 s to 5 min).", "state")

	descAppended = prometheus.NewDesc("sluice_route_appended_total", "Messages stored by the route's queue since start.", []string{"route"}, nil)
	descExpired  = prometheus.NewDesc("sluice_route_expired_total", "Undelivered messages deleted by the retention since start (for any target).", []string{"route"}, nil)
	descCommits  = prometheus.NewDesc("sluice_writer_commits_total", "Group commits of the route's queue writer.", []string{"route"}, nil)
	descCommReq  = prometheus.NewDesc("sluice_writer_committed_requests_total", "Appends and state changes carried by the commits; divided by the commits, the requests per commit.", []string{"route"}, nil)
	descCommSec  = prometheus.NewDesc("sluice_writer_commit_seconds_total", "Wall time spent in commits (writes and fsyncs); divided by the commits, the mean commit time.", []string{"route"}, nil)
	descCommFail = prometheus.NewDesc("sluice_writer_failed_commits_total", "Append commits that failed to write (for example, a full disk).", []string{"route"}, nil)
	descBytes    = prometheus.NewDesc("sluice_store_bytes", "Bytes of data in all segments (what storage.max_bytes limits).", nil, nil)
	descFree     = prometheus.NewDesc("sluice_disk_free_bytes", "Free space of the data directory's file system.", nil, nil)
	descLoopReq  = prometheus.NewDesc("sluice_event_loop_requests_total", "Requests the public listener's event loops served, by how: relayed (a passthrough request whose answer the loop read whole), streamed (a passthrough answer a goroutine streamed: chunked, large or unframed) or stored (a buffer-route request the loop stored and answered).", []string{"how"}, nil)
	descLoopGave = prometheus.NewDesc("sluice_event_loop_handed_over_total", "Connections the event loops handed to the goroutine-per-connection server, at a request they do not serve themselves (another route, a chunked or large body, a malformed byte).", nil, nil)
)

// stateCollector turns a State into series at each scrape.
type stateCollector struct{ state func() State }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBacklog, descOldest, descExpiredT, descPending, descRetrying, descInFlight, descRate, descRateWhy,
		descPaused, descBreaker, descETA, descDelivered, descRetried, descDead, descOutcomes, descDeadNow, descAccepted, descMessages,
		descAppended, descExpired, descCommits, descCommReq, descCommSec, descCommFail, descBytes, descFree, descLoopReq, descLoopGave} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.state()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, r := range st.Routes {
		counter(descAppended, float64(r.Appended), r.Name)
		counter(descExpired, float64(r.Expired), r.Name)
		counter(descCommits, float64(r.Writer.Commits), r.Name)
		counter(descCommReq, float64(r.Writer.Requests), r.Name)
		counter(descCommSec, r.Writer.Time.Seconds(), r.Name)
		counter(descCommFail, float64(r.Writer.FailedCommits), r.Name)
		for _, t := range r.Targets {
			l := []string{r.Name, t.Name}
			gauge(descBacklog, float64(t.Backlog), l...)
			gauge(descOldest, t.OldestPendingAge, l...)
			counter(descExpiredT, float64(t.Expired), l...)
			gauge(descPending, float64(t.Pending), l...)
			gauge(descRetrying, float64(t.Retrying), l...)
			gauge(descInFlight, float64(t.InFlight), l...)
			gauge(descRate, t.Rate, l...)
			gauge(descRateWhy, 1, r.Name, t.Name, t.RateReason)
			gauge(descPaused, b2f(t.Paused), l...)
			for _, s := range []string{"closed", "open", "half-open"} {
				gauge(descBreaker, b2f(t.Breaker == s), r.Name, t.Name, s)
			}
			eta := t.DrainETASeconds
			if eta < 0 {
				eta = math.Inf(1)
			}
			gauge(descETA, eta, l...)
			counter(descDelivered, float64(t.Delivered), l...)
			counter(descRetried, float64(t.Retried), l...)
			counter(descDead, float64(t.Dead), l...)
			gauge(descDeadNow, float64(t.DeadLetters), l...)
			if c := t.Counts; c != nil {
				gauge(descAccepted, float64(c.Accepted), l...)
				for _, p := range []struct {
					state string
					n     uint64
				}{{"delivered", c.Delivered}, {"dead", c.Dead}, {"expired", c.Expired}, {"purged", c.Purged},
					{"queued", c.Queued}, {"in_flight", c.InFlight}, {"retrying", c.Retrying}, {"parked", c.Parked}} {
					gauge(descMessages, float64(p.n), r.Name, t.Name, p.state)
				}
			}
			for _, o := range t.Outcomes {
				counter(descOutcomes, float64(o.N), r.Name, t.Name, o.Outcome, o.Class)
			}
		}
	}
	gauge(descBytes, float64(st.StoreBytes))
	if st.FreeBytes >= 0 {
		gauge(descFree, float64(st.FreeBytes))
	}
	counter(descLoopReq, float64(st.Loops.Relayed), "relayed")
	counter(descLoopReq, float64(st.Loops.Streamed), "streamed")
	counter(descLoopReq, float64(st.Loops.Stored), "stored")
	counter(descLoopGave, float64(st.Loops.HandedOver))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
