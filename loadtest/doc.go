// Package loadtest offers load to a sluice proxy, plays the slow downstream
// behind it, and checks that every request sluice acknowledged arrived.
//
// It is a library first: `sluice loadtest` and `sluice demo` wire the same
// stages, which are kept apart so that each can be tested (and later saved,
// re-read or charted) on its own:
//
//	Pacer ──> Generate ──> Recorder ─┐
//	                                  ├──> Verify ──> Report (text, JSON, HTML, PNG chart)
//	Downstream (mock target) ─────────┘
//	            Progress (bars on a terminal, plain lines elsewhere) samples both
//
// The stages:
//
//   - A Pacer says how many requests per second to offer at each moment
//     (constant, ramp, spike, or a scenario file of steps read by
//     ParseScenario with file:line errors); Hits integrates it into a send
//     schedule.
//   - Generate sends requests on that schedule and hands each Result to a
//     Recorder, which keeps counts, an HDR histogram of ack latency, the
//     ids sluice returned in X-Sluice-Id, and per-second series.
//   - Downstream is a mock target with a capacity (token bucket rate and a
//     concurrency limit, answered with 429 / 503 and Retry-After), optional
//     latency and injected failures. It records what it answered 2xx.
//   - Verify joins accepted ids with delivered ids: lost, duplicated,
//     unexpected, peak delivery rate, time to drain, end-to-end delay.
//     It is a pure function of plain data.
//   - Report prints the result as text or JSON, draws the chart (offered,
//     accepted and delivered per second over the backlog, with
//     gonum.org/v1/plot) and writes a self-contained HTML page with the
//     same numbers and the chart inline; WriteFiles writes all three.
//   - Progress shows a run live: bars (github.com/vbauerster/mpb/v8) on a
//     terminal, one plain line per second elsewhere, with the time left
//     to drain the backlog estimated from the last seconds' delivery rate.
//
// Guarantees:
//
//   - Open loop: the send times come from the pacer and the clock only,
//     never from how fast the server answers, so a slow server cannot hide
//     its slowness by slowing the generator (no coordinated omission).
//   - No silent queueing: at most GenConfig.Workers requests are in flight.
//     A send that falls due while all are busy is recorded as dropped
//     (ErrSaturated), so a saturated generator shows up in the report
//     instead of quietly lowering the offered rate.
//   - Ids are verified one by one: every id acknowledged with 202 must
//     reach the downstream; the count of each id's 2xx deliveries is kept,
//     so losses and duplicates are exact, not inferred from totals.
//
// Everything listens on loopback only. Functions that depend on time take a
// clock (DownstreamConfig.Now) or plain times (Hits, Verify) so that tests
// need not sleep; only Generate and WaitDrained read the wall clock, because
// their job is to wait.
package loadtest
