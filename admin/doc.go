// Package admin is sluice's operators' listener: health checks, Prometheus
// metrics, the state of every route and target, live control of targets
// (pause, resume, rate), dead letters (list, show, replay, purge), every
// message of a route (listed with filters, exported as NDJSON, counted by
// state, replayed by filter), policy reload, and a dashboard, all over HTTP on an address of its own
// (admin.listen), never on the public listener.
//
// It defines the small interfaces it needs (Node, Targets, DeadLetters,
// Messages, Reloader), over the store contract's value types; cmd/sluice adapts the drainers and the store to them, so this
// package knows neither.
//
// Guarantees:
//   - Every endpoint but /healthz, /readyz and the dashboard's static files
//     needs "Authorization: Bearer <token>" when a token is set; the check
//     compares SHA-256 digests in constant time. Refusals are 401 with a JSON
//     error. Errors never echo request bodies, and have one shape,
//     {"error": {"code", "message"}} (plus "param" or "errors" for some),
//     an export's failure after its first row included; a call this server
//     or its storage engine cannot serve is 501 not_supported.
//   - An operator's pause or rate (Controls) is written to controls.json in
//     the data directory (temporary file, fsync, rename, fsync of the
//     directory) before it is applied and before the API answers, so it
//     survives a crash or restart; one whose end ("until") has passed is
//     dropped on the next start or when it ends.
//   - A replay or purge by filter reads the dead-letter list in seq order
//     ahead of its changes: no letter is replayed twice by one request.
//     Replayed letters go back into the target's retry schedule, due one
//     after another at the replay's rate; the target's own limiter still
//     paces their delivery.
//   - Counts (GET .../counts, the state's counts, the metrics) add up per
//     target: accepted = delivered + dead + expired + purged + pending;
//     they are the store's (store.Counts), translated, never recomputed.
//   - An NDJSON export holds one chunk of rows (4096) at a time, flushed
//     before the next is read, and ends with {"end": true, "rows": N}.
//
// Costs: request counts and the ack-latency histogram are updated per
// request (atomic adds); every other series and GET /v1/routes read the
// node's counters at scrape time (O(routes × targets), plus a count of each
// target's dead-letter list, bounded by DeadLetterCountLimit, and the
// targets' message counts, reused for up to CountsTTL). Listing and counting
// read every message's state; the export's memory does not grow with the
// rows.
package admin
