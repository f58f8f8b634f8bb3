package store

import (
	"errors"
	"time"
)

// Errors that callers branch on. Match them with errors.Is; they are usually
// wrapped with context.
var (
	// ErrClosed is returned by every operation on a closed store or queue.
	ErrClosed = errors.New("store: closed")
	// ErrFull is returned by Append when admission control refuses a message
	// (the store is past its size limit or the disk past its free-space
	// floor); the error is usually a *FullError.
	ErrFull = errors.New("store: storage full")
	// ErrNotFound is returned when an id names no stored message (never stored,
	// expired with its segment, or not this queue's).
	ErrNotFound = errors.New("store: message not found")
	// ErrCorrupt is returned when a stored record fails its checksum or does not
	// decode.
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrTooLarge is returned by Append for a record larger than MaxRecordBytes.
	ErrTooLarge = errors.New("store: record too large")
	// ErrIO wraps a failed write or fsync (the cause is wrapped too, so
	// errors.Is(err, syscall.ENOSPC) works); only the requests of that
	// commit fail.
	ErrIO = errors.New("store: write failed")
	// ErrUnknownTarget is returned for a target name the queue was not opened with.
	ErrUnknownTarget = errors.New("store: unknown target")
	// ErrKeyMismatch is returned by AppendDraft for an idempotency key seen
	// before with another request: a different method, URI or body (see
	// Fingerprint). Nothing is stored.
	ErrKeyMismatch = errors.New("store: idempotency key reused with a different request")
)

// FullError is the error of an Append refused by admission control. It
// matches ErrFull with errors.Is.
type FullError struct {
	Reason string
	// RetryAfter estimates when space will free: when the oldest data will
	// be finished by every target at the current delivery rate.
	RetryAfter time.Duration
}

func (e *FullError) Error() string        { return ErrFull.Error() + ": " + e.Reason }
func (e *FullError) Is(target error) bool { return target == ErrFull }
