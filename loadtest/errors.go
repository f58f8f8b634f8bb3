package loadtest

import "errors"

// Errors that callers branch on, matched with errors.Is.
var (
	// ErrSaturated is the error of a Result whose send fell due while all
	// GenConfig.Workers were busy. The request was not sent.
	ErrSaturated = errors.New("loadtest: dropped, generator saturated")

	// ErrNotDrained is returned by WaitDrained when accepted ids are still
	// undelivered at the timeout.
	ErrNotDrained = errors.New("loadtest: not drained")
)
