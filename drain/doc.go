// Package drain replays buffered requests to their downstream targets, at the
// pace each target can take.
//
// A Drainer serves one target of one route. It reads the target's view of the
// route's queue through a Source (a *store.Consumer), sends every message to
// the target as an HTTP request, and records each attempt's outcome back in the
// store: delivered, retrying at a later time, or dead. Fan-out is one Drainer
// per target; drainers share nothing but the store, so a slow or broken target
// never holds back a fast one.
//
// # The replayed request
//
// The message's method, path, query, headers and body, as the proxy received
// them, with the path joined under the target URL's path (target
// http://h/base and /api/orders?x=1 give /base/api/orders?x=1). Hop-by-hop
// headers (Connection and the headers it names, Keep-Alive, Proxy-*, TE,
// Trailer, Transfer-Encoding, Upgrade) and Expect, Host and Content-Length are
// not copied; Host is the target's, Content-Length is the body's. Every attempt
// carries
//
//	X-Sluice-Id:          the message id
//	X-Sluice-Attempt:     1 for the first attempt, 2 for the first retry, ...
//	X-Sluice-Enqueued-At: when the proxy accepted it, RFC 3339 with nanoseconds, UTC
//	Idempotency-Key:      the client's key, or the message id if it sent none
//
// so the same message always arrives with the same Idempotency-Key, and the
// downstream can drop duplicates. The route's callback header (Config.CallbackHeader)
// is never sent. With Target.CaptureResponse the answer to a successful
// delivery is recorded with the outcome (capture.go); with a callback header
// the final outcome is POSTed to the message's callback URL (callback.go). Header names keep the spelling they arrived
// with (a few that fasthttp handles itself, such as Content-Type and
// User-Agent, are sent in canonical form).
//
// # Guarantees
//
//   - Rate: every HTTP attempt (one request: a message, or a batch), first or retry, takes a token from a token
//     bucket (golang.org/x/time/rate) before it is sent. The bucket holds
//     Target.Burst tokens and refills at the rate in force, so in any interval
//     of length T the target receives at most Burst + rate*T requests, whatever
//     the backlog. The rate in force is Target.RateAt(now) (time windows), with
//     SetRate's override in place of Target.Rate; it switches exactly at
//     Target.NextChange and at once on SetRate, Pause and Resume. While the rate
//     is zero or the drainer is paused nothing is fetched and nothing is sent;
//     the queue keeps filling.
//   - Concurrency: at most Target.Concurrency requests are open to the target
//     at once. Messages are fetched only when a slot and a token are free, so a
//     message held back by the rate stays queued, not in flight. (With no
//     rate limit, up to 3*Concurrency more are fetched ahead, the chain; they
//     are given back at a pause or a stop.) (A request
//     that timed out frees its slot at once, though the target may still be
//     working on it.)
//   - At least once: an outcome is recorded only after the target answered (or
//     failed). A message whose attempt was under way when the process stopped,
//     is attempted again after a restart; one whose outcome could not be
//     recorded stays in flight in the store until Run returns, which gives it
//     back, and is attempted again by the next Run (or after a restart). Both
//     times with the same id and Idempotency-Key. Duplicates happen only then.
//   - Retries never block: a failed attempt goes to the store's retry schedule
//     with a backoff (see Backoff) and the drainer moves on to other messages.
//
// # Outcomes
//
// A 2xx answer delivers the message. A status that Target.Retry.On retries
// (by default 5xx, 408, 425 and 429), a timeout (Retry.On.Timeout) or a
// failed connection (Retry.On.Connect: refused, reset, closed before the
// response, TLS failure, unreadable response) is retried until
// Retry.MaxAttempts attempts have been made, then the message is dead. Any
// other answer (other 4xx, 3xx, 1xx) makes it dead at once: sending the same
// request again would get the same answer.
//
// # Adaptive rate
//
// With Target.Adaptive set, the token bucket runs at an adaptive rate under
// the rate in force (the ceiling: Target.Rate, a window's rate or SetRate's).
// A 429 or 503, a timeout, or an attempt slower than Adaptive.Latency cuts it
// by the factor Adaptive.Decrease (default 0.7), at most once per 100ms and
// only for attempts sent after the previous cut, so one burst of refusals is
// one cut; it never goes below Adaptive.MinRate (or the ceiling, if lower).
// Otherwise it grows by Adaptive.Increase per second (default 5% of the
// ceiling per second) back up to the ceiling. While the ceiling is unlimited
// there is nothing to scale and adaptive stays out of the way. Stats reports
// the adaptive rate and the number of cuts. The rate guarantee above holds
// with the ceiling, since the adaptive rate is never above it.
//
// # Circuit breaker
//
// Every drainer has one (Target.Breaker; defaults 20 failures, 5s cooldown,
// 5m max_cooldown). After Failures consecutive failed attempts (no
// connection, a timeout or a 5xx; 429 and other answers are not failures)
// it opens: nothing is fetched or sent, so queued messages stay queued and
// spend none of their attempts. After the cooldown it is half-open and lets
// one attempt at a time out, carrying a real message; success closes it, a
// failure opens it again for twice the previous cooldown, up to MaxCooldown.
// Attempts already in flight when it opens finish; their failures change
// nothing. Stats reports the state and how often it opened.
//
// # Batches
//
// With Target.Batch set, one request carries up to Batch.MaxMessages
// messages, at most Batch.MaxBytes of body (a single larger message goes
// alone). The drainer fetches a batch when a slot and a token are free; if
// fewer messages are queued it waits up to Batch.MaxWait from the first one
// for more, then sends what it has. The request is POST to the target URL's
// path and query (the messages' own method, path and headers are not used;
// a trailing slash of the URL is dropped), with Content-Type
// application/x-ndjson, X-Sluice-Batch-Size (the number of lines) and
// X-Sluice-Attempt (the highest attempt number in the batch). The body is
// the messages' bodies, one per line, each line ended by \n. A body with a
// line break is compacted (encoding/json.Compact) if it is one JSON value,
// and otherwise recorded as dead at once with the reason: it cannot be one
// line. Rate, burst, concurrency and the breaker count requests, not
// messages. The answer to the request is the outcome of every message in
// it: all delivered, or all retried at the same time (the backoff of the
// highest attempt number, so the batch comes back together), or all dead;
// a message that has used its Retry.MaxAttempts is dead while the others
// retry. Each message's status, as for single deliveries, is recorded
// through Complete. Batches carry no Idempotency-Key: a retry may hold
// other messages than the first try, so the downstream should de-duplicate
// by content (for example an _id in each line).
//
// Target.Protocol picks the batch's wire format (the codecs are logproto's):
// ndjson (above); elasticsearch-bulk (esbulk.go: _bulk with an _id per
// document, the reply read item by item, each item delivered, retried alone
// or dead on its own); loki (a JSON push, judged whole); otlp (otlp.go: one
// export per encoding in the batch); splunk-hec (hec.go: event calls; an
// invalid-event-number kills that event alone). Target.Compression gzips
// batch bodies; Target.ByteRate holds a batch until a bytes-per-second
// bucket has room for it, besides the requests-per-second one.
//
// # Ordering
//
// With Target.Ordering, messages with the same key (a header's value) go
// out one at a time per key, in seq order; later ones are parked in the
// store (no attempt spent) and unparked when the one before reaches a final
// outcome. A failing message holds back only its key. See ordering.go for
// how a restart keeps the order. Not with batch; no direct sends.
//
// # Fairness
//
// With Target.Fairness, the rate is shared round robin among the keys (a
// header's value; messages without it are one more key) that have backlog:
// a key's flood cannot starve a trickling key, whose wait stays about one
// round of the keys with backlog. The drainer holds up to max(2,
// Concurrency/4) fetched messages per key and 4*Concurrency in all, fetched
// ahead of tokens (in flight in the store meanwhile; released at stop, sent
// again after a crash); the rest of a flooding key is parked in the store
// and unparked as its share comes round. No order is kept. See fairness.go
// for why nothing is lost across a restart. Not with batch or ordering; no
// direct sends. A drainer whose target uses neither ordering nor fairness
// (the policy changed) unparks whatever its target still has parked, at
// start, so nothing stays parked until the retention.
//
// # Costs
//
// One goroutine per drainer runs the schedule (the run loop: rate, breaker,
// timers, control calls, and per wake-up one round of the feeder of the
// target's delivery mode, plain, batch, ordered or fair, chosen once when
// Run starts: feeder.go); attempts run on the drainer's delivery loop, or
// on worker goroutines (below); one recorder goroutine hands their
// outcomes to the store in batches (Source's CompleteBatch when it has
// one). Up to Concurrency + 1024 outcomes may
// wait to be recorded; their messages' bodies are dropped once sent, so
// memory is bounded by Concurrency bodies in flight and three times as
// many fetched ahead (the chain, below; a batch target holds the batch being filled,
// fairness up to 4*Concurrency ready messages): an attempt reads its
// answer's status line and headers and discards the body as it streams
// (keeping at most capture_response.max_bytes of it), so answers of any
// size cost a few KiB each (a batch's reply that is read, and Forward's
// answer, are read whole, up to 16 MiB). An attempt ends at the target's timeout and
// closes its connection. Connections to targets go through internal/netio:
// the deadlines fasthttp sets on every request are armed only when they
// must be, and on Linux sockets are read and written with raw system
// calls, a third fewer context switches a delivered message.
//
// The delivery loop (loop_linux.go): on Linux, a target whose attempts are
// single requests (not batches) over http:// with no capture_response has
// them made by delivery loops: ceil(Concurrency/32) goroutines, at most
// one per CPU, each with an epoll set and its share of the connections,
// waited on through Go's poller. A loop writes each request on a
// keep-alive connection and reads the answer when the socket has it, so no
// goroutine parks and wakes per message (~23-25 against ~33 CPU µs a
// delivered message to bench/noop, and the same bytes on the wire:
// TestLoopParity). The answers
// it does not read itself (answer.go: 1xx, HTTP/1.0, unframed, chunked and
// still coming, anything malformed) a goroutine reads with the fasthttp
// client's reader, as the worker path would. Elsewhere, and with
// Config.NoLoop (server.event_loops: 0), attempts run on worker goroutines
// with the fasthttp client, at most Concurrency of them, reused (a worker
// idle for 2 s exits). The two differ in no rule: one request per attempt,
// never resent by the client; the target's timeout covers the dial, the
// request and the answer's head; at most Concurrency connections; an idle
// one is closed after 10 s.
//
// At full speed the run loop is kept off the path of each message: for a
// plain target with no rate limit, a closed breaker and no control call
// since the loop last looked, the plain feeder keeps up to 3*Concurrency
// fetched messages in a chain (chain.go), and a worker (or the loop) whose
// attempt got a 2xx keeps its slot and starts the next one from it. Any change (a pause,
// a rate, a window's boundary, the breaker, a control call) closes the
// chain and gives its messages back before anything is sent at a stale
// rate.
//
// The drainer wakes on new messages (Source.Ready), when the earliest retry
// is due, at window boundaries, on control calls, on its attempts' events
// (taken all at once) and every 500ms as a safety net; it never spins.
// Each round costs at most one Fetch, of up to Concurrency messages (a
// batch target: what the pending batch lacks of Batch.MaxMessages; with
// fairness: what the ready queues lack, up to 4*Concurrency). With
// fairness, a flooding key's messages cost two more commits each (park and
// unpark, grouped), and up to 4*Concurrency fetched messages are held.
// Recording an outcome costs a share of one commit in the store (with the
// other outcomes of its batch and appends, by group commit).
package drain
