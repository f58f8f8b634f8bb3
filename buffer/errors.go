package buffer

import "errors"

// Errors that callers branch on. Match them with errors.Is; they are usually
// wrapped with context.
var (
	// ErrClosed is returned by every operation on a closed Store or Queue.
	ErrClosed = errors.New("buffer: closed")
	// ErrFull is returned by Append when admission control refuses a message:
	// the store passed Config.MaxBytes or the disk passed Config.MinFreeBytes.
	ErrFull = errors.New("buffer: storage full")
	// ErrNotFound is returned when an id names no stored message (never stored,
	// expired with its segment, or not this queue's).
	ErrNotFound = errors.New("buffer: message not found")
	// ErrCorrupt is returned when a stored record fails its checksum or does not
	// decode.
	ErrCorrupt = errors.New("buffer: corrupt record")
	// ErrTooLarge is returned by Append for a record larger than MaxRecordBytes.
	ErrTooLarge = errors.New("buffer: record too large")
	// ErrIO wraps a failed write or fsync; only the requests in that commit fail.
	ErrIO = errors.New("buffer: write failed")
	// ErrUnknownTarget is returned for a target name the queue was not opened with.
	ErrUnknownTarget = errors.New("buffer: unknown target")
)
