// Package buffer is sluice's embedded storage engine: one append-only queue
// per route, read independently by one consumer per target. It implements
// the contract of package store (Queue, Consumer, Parker, DeadLetters,
// Lister, Replayer) and
// passes its conformance suite (conformance_test.go); the value types it
// uses (Message, ID, State, ...) are store's, under the same names.
//
// # Model
//
// A Store owns a data directory. Each Queue in it (one per route) is a log of
// Messages numbered by a sequence (seq) that only grows. Every target of the
// route has a Consumer with its own cursor, so a slow target never holds back a
// fast one: fan-out costs one cursor, not one copy of the data.
//
// # On-disk layout
//
//	DIR/queues/<queue>/cursors.db               bbolt: consumer floors, targets' first seqs, queue metadata, tombstones of expired messages
//	DIR/queues/<queue>/seg-<firstSeq:016x>.log  the segment's messages, append-only
//	DIR/queues/<queue>/seg-<firstSeq:016x>.idx  where each frame starts (sealed segments)
//	DIR/queues/<queue>/seg-<firstSeq:016x>.db   bbolt: the segment's delivery state
//	DIR/queues/<queue>/spare-<bound:016x>.log   a deleted segment's log, kept for a new head
//	DIR/queues/<queue>/outcomes-<gen:016x>.log  first Delivered outcomes not yet in the .db files
//	DIR/queues/<queue>/seg-<firstSeq:016x>.deleting  marks a segment deletion under way
//
// The .log is a sequence of frames (len | seq | CRC-32C of both | record,
// see logfile.go), written once and never rewritten. The .db holds, in buckets:
//
//	"s/<target>" seq -> state record: delivered, retrying or dead, with the
//	             history of attempts (status code, error, time); CRC-32C and
//	             store.AppendState's binary form (older records: JSON)
//	"b/<target>" first seq of a block of 64 -> the state records of the
//	             block's first Delivered outcomes, packed (blocks.go); a
//	             seq's record in "s/" takes precedence
//	"r/<target>" nextTry (unix ns, 8 bytes BE) | seq -> "" : the retry schedule,
//	             ordered by due time so "what is due now" is a cursor seek
//	"d/<target>" seq -> "" : the dead letters, listed without scanning states
//	"p/<target>" parked messages (behind an idempotency key in flight)
//	"k"          SHA-256(idempotency key)[:16] -> seq | id tag | the request's
//	             store.Fingerprint (16 bytes; absent in segments sealed before
//	             fingerprints) (sealed segments; the head's keys are in memory,
//	             rebuilt from its log at start)
//	"info"       first seq, time of the last append, "key_filter": a Bloom
//	             filter of the segment's keys with a CRC-32C (see keyFilter),
//	             and "sealed": the message count, written last when the
//	             segment stops being the head
//
// Everything a message needs (its bytes, its per-target outcome, its place in
// the retry schedule) lives in the segment that holds it, so deleting a segment
// is deleting three files, never rows (the .db first: a segment exists while
// its .db does, and start-up removes the leftovers of an interrupted deletion).
// Up to two deleted logs are kept as spares (not while the free-disk floor
// is near): a new head writes over a spare's blocks instead of growing a new
// file, so that an fsync flushes the data alone (see takeSpare). A spare's
// old frames all have seqs below its bound, recorded in the segment that
// takes it; reading stops at the first of them, and sealing cuts them off.
// The log rolls to a new segment when the head passes Config.SegmentBytes or,
// if it holds anything, Config.SegmentAge. A segment is deleted once it is older
// than the retention (undelivered messages in it are counted and logged as
// expired), or earlier, when admission control is refusing appends and every
// target has finished with it.
//
// Every message is listed and counted by phase (Messages, Counts: the
// store.Lister extension, list.go) by walking the segments in chunks of
// 512 seqs, one read transaction each: flat memory whatever the queue's
// size, one state decode per message and target, plus one read of the
// records for a listing or a time-bounded count. A message the retention
// deletes before a target finished it leaves a tombstone (125 to 160
// bytes and its key, no body) in cursors.db, listed and counted as expired for one
// more retention (tombstone.go). A purged dead letter is Purged.
//
// Dead letters are indexed per target ("d/<target>"), so they are listed
// without scanning states, and can be revived into the retry schedule or
// purged. Idempotency keys live beside their messages and expire with them.
//
// Frames and records carry a CRC-32C. A damaged record is reported (Consumer
// marks it dead for its target with the reason, and Inspect with verify lists
// it); it is never delivered as garbage and never stops the records after it:
// reading a damaged log resynchronises on the next whole frame. A torn frame
// at the end of the head (a crash inside write(2)) is cut off at start with a
// warning; a lost or short .idx is rebuilt from the log.
//
// # Durability
//
// One goroutine per queue owns every write (group commit, after nsq's ioLoop):
// Append and Complete hand it a change and wait; it gathers whatever changes
// are waiting, appends their frames to the head's log with one write(2) and,
// with SyncAlways, one fdatasync, and only then acknowledges. Many requests
// share one fdatasync, so throughput grows with concurrency while each
// acknowledgement stays durable. Delivery outcomes are committed to the
// segments' .db files by the same goroutine, in one bbolt transaction per
// touched segment. SyncInterval acknowledges after the write(2) and syncs every
// Interval: a kill -9 loses nothing, a power loss may lose the last Interval.
// SyncNever never fsyncs before an acknowledgement: every 10ms
// (Config.SyncInterval) the writer only starts the kernel's writeback of what
// the logs got (sync_file_range, no wait), so that dirty pages do not pile up
// and stall acknowledgements; rolls, seals, checkpoints and Close still fsync
// what they finish.
//
// # Delivery state
//
// A consumer's floor is the lowest seq it has not finished; everything below it
// is delivered, dead or in the retry schedule. Floors are persisted (fsynced)
// every CursorInterval and at Close; they may lag, never lead. After a crash a
// consumer restarts at the persisted floor and skips every message that already
// has a state record, so only attempts that were in flight at the crash (and
// whose outcome was not yet committed) are sent again — at least once, with the
// same id and so the same Idempotency-Key.
//
// The common outcome, a message Delivered at its first attempt, is not a
// bbolt transaction: it is a frame in the outcome journal written by the same
// group commit (one write(2) for every outcome of the commit; with
// SyncAlways an fdatasync with the next commit that appends, or within
// outcomeSyncMax, 10 ms), kept in memory by blocks of 64 seqs (65-70 bytes
// an outcome, BenchmarkPendingOutcomeMemory: a 24-byte slot and a copy of
// its ~37-byte state record; at most 64Ki outcomes or 4096 blocks) until a checkpoint writes each
// block into its segment's .db file with one bbolt put, one fsync per
// file, at least once a second, and before a segment with outcomes pending
// is deleted (not on a retention pass that deletes nothing) (see
// journal.go, pending.go, blocks.go). Retries, dead
// letters and parking, which update indexes, commit to bbolt directly.
// Start-up applies any journal left before anything is read. Within one run
// the consumer remembers how far it has read (and what Release gave back),
// so reading new messages costs no bbolt transaction.
//
// # Who owns what
//
// The writer goroutine owns every file (logs, .db files, journal,
// cursors.db) and the head. Everything written reaches it as a typed change
// (commit.go): appendChange and appendManyChange (frames for the head's
// log), journalOutcome (a first outcome that is Delivered), stateChange
// (any other state of one message for one target, with its side effects on
// the retry schedule, dead letters and parked index) and findKeyChange (a
// look-up, no write). A commit collects what is waiting, writes it (the
// frames with one write(2), the outcomes with one, the state changes in one
// bbolt transaction per segment), then settles every change's effect in
// memory under Queue.mu at once, and answers. Queue.mu guards the
// in-memory views the others read; Consumer.fetchMu serialises Fetch and
// Release of one consumer. A message's state, piece by piece:
//
//   - its log frame: written once by the writer (appendBatch), never
//     rewritten; readers see it once it is indexed (segLog.mu), after its
//     write (and, with SyncAlways, its fdatasync). The head's idempotency
//     keys (segLog.keys) are the writer's alone; next seq and the segments
//     list are the writer's, changed under Queue.mu.
//   - its state record for a target ("s/"), and the entries that go with
//     it in the retry schedule ("r/"), the dead letters ("d/") and the
//     parked index ("p/"): written together by one stateChange in the
//     writer's transaction (stateChange.apply); the counts they change
//     (segment.retries, segment.parked, Consumer.retrying) are updated by
//     its settle, under Queue.mu. Readers use read transactions.
//   - its first Delivered outcome: a journalOutcome, a frame in the journal
//     (the writer's file); from its settle until a checkpoint has
//     committed and fsynced it into its delivered block ("b/", written by
//     the writer only) it is in Queue.pending, which the writer changes
//     and readers read under Queue.mu.
//   - its claim, Consumer.inflight: taken under Queue.mu by Fetch (and by
//     changeStates for Unpark, Revive, Purge and Replay), ended by the
//     writer in the settle of the change that recorded its outcome (once
//     committed, or failed for good), or by Release; a failed write leaves
//     it, so the floor stays below it. Consumer.next, hwm and released
//     (Fetch's position and what Release gave back) are guarded by Queue.mu.
//   - the cursors: each consumer's floor (the lowest seq it has not
//     finished: next and the in-flight set, read under Queue.mu) and the
//     next seq are persisted by the writer into cursors.db (saveFloors),
//     as are the targets' first seqs and the tombstones.
//
// Lock order: Queue.mu may be held while a read transaction begins
// (listings and snapshotView do, to see memory and file at one instant),
// so no goroutine waits for Queue.mu while it holds a read transaction.
// bbolt remaps a .db that a write transaction grows only once every read
// transaction has ended, and makes new ones wait meanwhile: a reader
// waiting for Queue.mu, a lister holding it in Begin and the writer
// remapping would wait for one another for ever. Code in a read
// transaction works on copies taken before it (Consumer.inflightCopy,
// snapshotView's) and takes Queue.mu after it (TestNoReadTxWaitsForQueueLock).
//
// # Costs
//
// Memory is bounded by in-flight work (at most what consumers have fetched but
// not completed) plus a few words per segment; it does not grow with the
// backlog; the head's frame index costs 16 bytes a message, at most one
// segment's worth. The exception: the key filters of the sealed segments, 10
// bits per keyed message (none for a queue without idempotency keys), which
// spare a keyed append one bbolt transaction per sealed segment. Start-up opens each sealed segment's .db and reads its
// seal and retry counts without touching its messages; only the head's log
// (at most Config.SegmentBytes) is read once, to rebuild its index and keys.
package buffer
