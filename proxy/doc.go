// Package proxy is sluice's public listener: it matches each request to a
// route of the policy and buffers it, passes it through, or refuses it, and it
// serves the status API (GET /_sluice/v1/messages/{id}; status.go: it can
// be turned off or need a token, and it hides query values, credential
// headers and, without the admin token, captured bodies).
//
// Guarantees:
//   - A buffered request is answered 202 only after store.Queue.Append (or
//     AppendDrafts, for the batch it was in) returned without an error for
//     it, i.e. once the request is durable under the store's sync mode.
//     Every other outcome (full storage, write error, shutdown, timeout) is a
//     4xx/5xx with a JSON error body; nothing is acknowledged that was not
//     stored.
//   - Bodies above a route's max_body are refused with 413: a Content-Length
//     before any of the body is read, a chunked body as soon as it passes the
//     limit (nothing stored; on passthrough the upstream request is aborted
//     and the connection closed). Unknown paths get 404 and wrong methods
//     405, both with JSON bodies.
//   - Buffer and spillover routes read a body whole (reqbody.go); a
//     passthrough route streams a body over 64 KiB, or chunked, to its
//     upstream as it arrives, so memory does not grow with its size.
//   - Hop-by-hop headers (RFC 9110 section 7.6.1) are never stored or
//     forwarded; X-Forwarded-For is appended to, never overwritten.
//   - A passthrough route (and default_upstream) forwards only to its
//     configured upstream, whatever the Host header or an absolute request URI
//     says (no open proxy); CONNECT and non-path request targets are refused.
//   - A spillover route answers with its target's own reply only for a request
//     it forwarded at once (X-Sluice-Mode: forwarded, nothing stored); every
//     other request is stored first and answered 202 (X-Sluice-Mode:
//     buffered), including one whose direct attempt failed retryably.
//     Direct and queued requests share the target's bucket and slots.
//   - Estimated delivery times (eta.go): the 202 and the status API carry,
//     per target, when the message should be delivered, from the backlog
//     ahead, the rate in force and the windows; a route's max_wait refuses
//     (503 backlog_too_long, nothing stored) a request estimated later.
//   - A route's callback_header names a callback URL that must match the
//     policy's callbacks.allow (400 callback_not_allowed otherwise, nothing
//     stored); the drainers make the callbacks.
//   - A request's path is normalised once (path.go: unreserved characters
//     decoded, dot segments removed, an encoded slash kept encoded); that
//     one form is routed, stored and replayed, or forwarded, so routing and
//     forwarding never see different paths.
//   - Error bodies never quote the request, and neither do log lines.
//   - A route with a log protocol (routes[].protocol; logs.go) stores one
//     message per document and answers in the protocol's own shape only
//     once every document of the request is durable; a malformed request is
//     refused whole in that shape, nothing stored. The documents of one
//     request are appended at once (the store has no batch append), so they
//     normally share a group commit and are stored in any order; a commit
//     failing between them leaves some stored (an Elasticsearch reply says
//     which). A request finding the storage full waits up to 10 s for room.
//   - The listener's limits (server: read_timeout, max_header_bytes,
//     max_connections) bound what one client can hold; one connection over
//     max_connections gets a JSON 503 (listener.go); see match.go for route
//     matching.
//
// Event loops (evloop_linux.go, server.event_loops): on Linux, when the
// policy passes requests through or has a buffer route of the http
// protocol, plain-HTTP connections are accepted by a few threads with an
// epoll set each, which relay the plainest passthrough requests and answers
// themselves (evparse.go says which), store the plainest buffer-route
// requests (evstore_linux.go: the requests of one turn of a loop go to
// their queue in one AppendDrafts call, answered once it returned), and
// hand every other connection, with the bytes read, to the fasthttp
// server. The upstream receives the same request, the store holds the same
// record, and the client gets the same status, fields and body on both
// paths (TestEventLoopParity, TestEventLoopStoreParity; a chunked answer's
// chunks may be cut differently); the guarantees above hold on both: the
// loops check, store and answer a buffered request with the same code as
// the fasthttp path (prepareBuffer, answerBuffer).
//
// Costs: one goroutine per connection (fasthttp's worker pool) beside the
// event loops, none for a connection the loops keep; a buffered
// request waits for one group commit (on the loops, one goroutine per
// batch of a turn waits for it, and the connection reads no further
// request until its answer is written). Connections (public and upstream) arm
// their deadlines lazily and, on Linux, read and write their sockets with
// raw system calls through the poller (internal/netio, which the drainers'
// clients use too): on the
// passthrough path these were ~17% of the proxy's CPU a request, in timer
// updates, thread hand-offs and the runtime monitor's wake-ups.
package proxy
