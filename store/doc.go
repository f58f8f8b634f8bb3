// Package store is the storage contract of sluice: the value types every
// storage engine shares (Message and its record codec, ID, Draft, the
// phases, attempts and states of delivery, Delivery and Outcome, sentinel
// errors) and the interfaces the proxy and the drainers use (Queue to
// append, look up and report; Consumer to fetch, complete, release and
// retry; Parker, DeadLetters, BatchAppender, BatchCompleter, Lister and
// Replayer as optional extensions). It holds no
// storage: package buffer (bbolt and append-only logs) implements it, and a
// second engine implements the same interfaces and passes the conformance
// suite in store/storetest.
//
// # Guarantees an engine must give
//
//   - Append returns only once the message is durable as the engine's sync
//     mode promises, with an id whose seq grows and whose random tag makes
//     ids unguessable; Lookup with a wrong tag is ErrNotFound.
//   - Every target's Consumer reads every message, independently of the
//     other targets (fan-out costs a cursor, not a copy).
//   - Fetch hands a message to one attempt at a time: it stays in flight
//     until Complete records an outcome or Release gives it back. Complete
//     returns once the outcome is durable; a message whose Delivered
//     outcome was acknowledged is never handed out again, across restarts
//     and crashes. After a crash, only messages in flight (or whose outcome
//     was not yet durable) are handed out again: at least once.
//   - Retrying outcomes come back from Fetch once due, with Attempt + 1 and
//     the prior state; Dead ones stay listed until revived or purged.
//   - An idempotency key seen on a queue within its retention names the
//     first message again and stores nothing (Draft.Duplicate), as long as
//     the request is the same one (Fingerprint); another request with that
//     key is refused with ErrKeyMismatch.
//   - A Lister puts every message it holds for a target in exactly one
//     phase, so its Counts add up: accepted = delivered + dead + expired +
//     purged + pending (queued, in flight, retrying, parked); Counts.Add
//     is the one place a phase becomes a count.
//
// # Costs
//
// The package itself allocates nothing beyond the values it returns; the
// record codec (EncodeRecord, Draft.Encode, DecodeRecord) is one pass with
// a CRC-32C, and the state codec (AppendState, DecodeState) one pass of
// varints for an engine that stores a State per message and target.
package store
