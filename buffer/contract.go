package buffer

import (
	"hash/crc32"

	"github.com/sluice-proxy/sluice/store"
)

// buffer implements the store contract.
var (
	_ store.Queue          = (*Queue)(nil)
	_ store.Consumer       = (*Consumer)(nil)
	_ store.Parker         = (*Consumer)(nil)
	_ store.BatchCompleter = (*Consumer)(nil)
	_ store.DeadLetters    = (*Queue)(nil)
	_ store.BatchAppender  = (*Queue)(nil)
)

// The contract's value types under their old names, used inside buffer.
type (
	ID           = store.ID
	Message      = store.Message
	Header       = store.Header
	Draft        = store.Draft
	Phase        = store.Phase
	Attempt      = store.Attempt
	State        = store.State
	Response     = store.Response
	Outcome      = store.Outcome
	Delivery     = store.Delivery
	TargetStatus = store.TargetStatus
	QueueStats   = store.QueueStats
	TargetStats  = store.TargetStats
	FullError    = store.FullError
	DeadLetter   = store.DeadLetter
)

const (
	Queued    = store.Queued
	InFlight  = store.InFlight
	Retrying  = store.Retrying
	Delivered = store.Delivered
	Dead      = store.Dead
	Parked    = store.Parked

	MaxRecordBytes = store.MaxRecordBytes
)

var (
	ErrClosed        = store.ErrClosed
	ErrFull          = store.ErrFull
	ErrNotFound      = store.ErrNotFound
	ErrCorrupt       = store.ErrCorrupt
	ErrTooLarge      = store.ErrTooLarge
	ErrIO            = store.ErrIO
	ErrUnknownTarget = store.ErrUnknownTarget
	ErrKeyMismatch   = store.ErrKeyMismatch

	ParseID      = store.ParseID
	EncodeRecord = store.EncodeRecord
	DecodeRecord = store.DecodeRecord
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func newTag() [8]byte { return store.NewTag() }
