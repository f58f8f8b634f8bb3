// Package jetstore is sluice's storage engine on NATS JetStream, for running
// several sluice nodes on one replicated store. It implements the contract
// of package store (Queue with Lister and Replayer, Consumer with
// BatchCompleter and Parker, DeadLetters; not BatchAppender nor
// ForwardRecorder) and passes its conformance suite (conformance_test.go).
//
// # Model
//
// Each route is a stream, <prefix>_<route>, on the subject <prefix>.<route>,
// holding every accepted request as one message (the store's record: id tag,
// time, method, URI, headers, idempotency key, body, CRC-32C). A message's
// seq is its stream sequence. The stream keeps messages for the retention
// (MaxAge), refuses appends past max_bytes (DiscardNew: ErrFull, never a
// dropped message), and is replicated on 1, 3 or 5 servers.
//
// Each target is a durable pull consumer on its route's stream: explicit
// acknowledgements, MaxAckPending as the caller sets it (sluice serve: four
// times the target's concurrency times its batch size, at least 64; the
// drainer keeps the concurrency itself), no MaxDeliver (attempts are counted
// here). Outcomes live in a key-value bucket, <prefix>_state, written before
// the consumer's acknowledgement:
//
//	s.<route>.<target>.<seq>  the State (phase, attempts, history), in the
//	                          store's binary state codec
//	r.<route>.<target>.<seq>  in the retry schedule, due at (unix ns)
//	d.<route>.<target>.<seq>  a dead letter (listed by DeadLetters)
//	p.<route>.<target>.<key hash>.<seq>  parked behind its key (Parker)
//
// A purged dead letter's state is Purged (finished, never attempted again).
// The bucket's entries expire with the retention. A message handed out again
// by the server (its node died holding it, or its acknowledgement was lost)
// is checked against its s. entry first, so a recorded outcome is never
// attempted again.
//
// # One node drains a target at a time
//
// A second bucket, <prefix>_leases, whose entries live LeaseTTL, holds one
// lease per (route, target): a node creates it if absent, renews it by
// revision at 75% of the TTL, and drops it when a renewal fails; it counts it
// as held only until 90% of the TTL after the write was sent. Fetch hands out
// messages only on the node holding the lease, so the drainer of that node is
// the only one sending to the target, and the target's rate holds across all
// nodes. When the holder dies, its entry expires and another node takes the
// lease within about 1.1 TTL (the entry's TTL plus the TTL/10 poll), and
// starts handing out messages a quiet second later; the dead node's messages
// in flight are handed out again AckWait (5s) after its last keep-alive
// (duplicates only for those). On a graceful stop a node gives its messages
// back and deletes its lease, so the next node takes over within a poll and
// the quiet second. A node restarted under the same name (sluice serve: its
// host and an id kept in its data directory) takes its own lease back at
// once.
//
// # Listing, counting, replaying
//
// Messages (store.Lister) walks the stream by seq, at most limit messages a
// call: the records from an ephemeral consumer started at the page's first
// seq, 64 at a time (a page of 8 or fewer: one get each), and the page's
// states with batched direct gets of the state bucket (multi_last, NATS
// 2.11 and later), at most 1024 states a request, the servers' limit on a
// batched get's answers: one request for a batch with up to 16 targets,
// ceil(64*targets/1024) with more (older servers: one get per state, 32 at
// once). Memory is one batch of 64 records and their states, whatever
// the stream's size; the caller's cursor is a seq, so a page cut short by
// a server restart is read again from the same seq, and no message is
// listed twice. Counts
// without time bounds reads no record: it watches the target's state keys
// (one entry each) and counts the stream's other messages as queued or in
// flight; within time bounds it walks the stream as a listing does. Seqs
// can have gaps (an operator removed a message, the server lost some in a
// damaged block): a count asks the server which seqs are gone (8 bytes
// each in memory) and counts neither them nor their states; past 65536
// gone, it walks the stream instead.
//
// What it cannot know: the retention (MaxAge) deletes a message and its
// record, so nothing is ever listed or counted Expired; the listing and
// the counts cover the messages the stream holds. In flight is exact on
// the node holding the target's lease; while another node holds it, a node
// counts as in flight every message the durable consumer handed out with
// no outcome yet (including those the holder gave back to try again), and
// a retry under way on the holder as retrying; while no node holds it
// (between a holder's death or stop and the next one), as queued, though a
// node that lost the lease may still be finishing attempts. Lookup (the
// status API) tells in flight the same way. A page is read over some
// milliseconds: a message that finishes meanwhile may show its phase from
// before.
//
// Replay (store.Replayer) puts a delivered or dead message back into the
// target's retry schedule: the retry entry first, then the dead-letter
// entry's removal, then the state, swapped by revision (of two concurrent
// replays, or a replay and a purge, one wins and the other is ErrNotFound),
// then a notice to the lease holder. A node dying half-way leaves a retry
// entry whose state is still delivered or dead, which the holder drops when
// it comes due: the replay is undone, never half done. The holder learns of
// the entry from the notice, or, if it missed it, from its schedule read
// again every 30 s, and delivers it through the target's limiter.
//
// # Guarantees
//
//   - Append returns once the stream's leader has the message stored and,
//     with replicas 3 or 5, a quorum has it. The embedded server (no URLs)
//     syncs every write to disk before acknowledging (sync_interval: always);
//     an external cluster does so only if configured to: see the README.
//   - Idempotency keys are the messages' Nats-Msg-Id, and the stream's
//     duplicate window is the retention: a repeated key on any node answers
//     the first message's id, once the first message (read back from the
//     stream) is found to be the same request (store.Fingerprint); another
//     request with the key gets ErrKeyMismatch. The servers keep the
//     window's keys in memory (of the order of 100 bytes a key: an estimate,
//     not measured).
//   - At least once to every target; an attempt is repeated only if its node
//     died (or lost the lease's connection) before its outcome was written.
//     The engine acknowledges a message to the durable consumer only after
//     its outcome is written, so a dead node's repeats are at most the
//     consumer's MaxAckPending.
//   - A target's rate holds across nodes: one holder at a time, and a node
//     that gains the lease hands out nothing for HandoverQuiet (1s), so no
//     second has the sends of two holders.
//
// # Costs
//
// An append is one publish and its acknowledgement (a round trip, a quorum
// write). Each outcome is one or two key-value writes (state, then retry or
// dead-letter entry) and an acknowledgement not waited for. Lookup reads the
// message and one state per target. Stats (cached 250ms) asks the servers
// for the stream's and each consumer's info. The state bucket holds one key
// per (message, target) outcome for the retention, and nats-server indexes
// every key in memory (of the order of 100 bytes each: an estimate, not
// measured). The retry schedule of a target is held in memory by the lease
// holder and read from the bucket when it gains the lease (one read per
// retrying message), and again every 30 s (one listing of the target's
// retry keys). DeadLetters lists the target's dead-letter keys (one key per
// dead letter) on every call.
//
// A listing costs about 18 CPU-µs a message with two targets (one get per
// state, on servers before 2.11: about 44); a count of a target about 2.0
// CPU-µs a message the stream holds (half of them finished), or about 19
// within time bounds: the client and an in-process server together, on a
// 10k-message route, loaded 2-vCPU machine (load average 9), from
// `go test -run '^$' -bench 'List|Counts' -benchtime 3x -count 3
// ./jetstore` (list_bench_test.go; BENCHMARKS.md). A million messages:
// about 18 CPU-seconds to list, 2 to count.
package jetstore
