// Package drain replays buffered requests to their downstream targets, at the
// pace each target can take.
//
// A Drainer serves one target of one route. It reads the target's view of the
// route's queue through a Source (a *buffer.Consumer), sends every message to
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
// downstream can drop duplicates. Header names keep the spelling they arrived
// with (a few that fasthttp handles itself, such as Content-Type and
// User-Agent, are sent in canonical form).
//
// # Guarantees
//
//   - Rate: every HTTP attempt, first or retry, takes a token from a token
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
//     message held back by the rate stays queued, not in flight. (A request
//     that timed out frees its slot at once, though the target may still be
//     working on it.)
//   - At least once: an outcome is recorded only after the target answered (or
//     failed). A message whose attempt was under way when the process stopped,
//     or whose outcome could not be recorded, stays in flight in the store and
//     is attempted again after a restart, with the same id and Idempotency-Key.
//     Duplicates happen only then.
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
// # Costs
//
// One goroutine per drainer runs the schedule; each attempt runs in its own
// goroutine, at most 2*Concurrency at once (Concurrency sending, up to
// Concurrency more waiting for their outcome to be committed). Memory is
// bounded by those attempts' messages. The drainer wakes on new messages
// (Source.Ready), when the earliest retry is due, at window boundaries, on
// control calls and every 500ms as a safety net; it never spins. Each wake-up
// costs one Fetch; a busy drainer does one Fetch per batch of free slots.
// Recording an outcome costs one commit in the store (shared with other
// outcomes and appends by group commit).
package drain
