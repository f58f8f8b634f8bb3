// Package buffer is sluice's durable store: one append-only queue per route,
// read independently by one consumer per target.
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
//	DIR/queues/<queue>/cursors.db              bbolt: consumer floors, queue metadata
//	DIR/queues/<queue>/seg-<firstSeq:016x>.db  bbolt: one segment of the log
//
// A segment holds, in buckets:
//
//	"m"          seq (8 bytes, big endian) -> message record (see record.go)
//	"s/<target>" seq -> state record: delivered, retrying or dead, with the
//	             history of attempts (status code, error, time)
//	"r/<target>" nextTry (unix ns, 8 bytes BE) | seq -> "" : the retry schedule,
//	             ordered by due time so "what is due now" is a cursor seek
//	"d/<target>" seq -> "" : the dead letters, listed without scanning states
//	"k"          SHA-256(idempotency key)[:16] -> seq (keyed appends only)
//	"info"       first seq, time of the last append
//
// Everything a message needs (its bytes, its per-target outcome, its place in
// the retry schedule) lives in the segment that holds it, so deleting a segment
// is deleting one file, never rows. The log rolls to a new segment when the head
// passes Config.SegmentBytes or, if it holds anything, Config.SegmentAge. A
// segment is deleted once it is older than the retention (undelivered messages
// in it are counted and logged as expired), or earlier, when admission control
// is refusing appends and every target has finished with it.
//
// Dead letters are indexed per target ("d/<target>"), so they are listed
// without scanning states, and can be revived into the retry schedule or
// purged. Idempotency keys live beside their messages ("k") and expire with
// them.
//
// Records carry a CRC-32C. A damaged record is reported (Consumer marks it dead
// for its target with the reason, and Verify lists it); it is never delivered as
// garbage and never stops the records after it.
//
// # Durability
//
// One goroutine per queue owns every write (group commit, after nsq's ioLoop):
// Append and Complete hand it a request and wait; it gathers whatever requests
// are waiting, writes them in one bbolt transaction per touched segment and,
// with SyncAlways, returns only after fsync. Many requests share one fsync, so
// throughput grows with concurrency while each acknowledgement stays durable.
// SyncInterval acknowledges after the write(2) and fsyncs every Interval: a
// kill -9 loses nothing, a power loss may lose the last Interval. SyncNever
// leaves flushing to the kernel.
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
// # Costs
//
// Memory is bounded by in-flight work (at most what consumers have fetched but
// not completed) plus a few words per segment; it does not grow with the
// backlog. Start-up opens each segment file and reads its last key and retry
// counts; it never scans messages.
package buffer
