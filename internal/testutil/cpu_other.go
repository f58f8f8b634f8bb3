//go:build !unix

package testutil

import "time"

// CPUTime is not measured here: 0, and the benchmarks report no CPU figures.
func CPUTime() time.Duration { return 0 }
