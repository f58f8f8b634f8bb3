//go:build unix

package testutil

import (
	"syscall"
	"time"
)

// CPUTime is this process's user and system CPU time so far: on a shared
// machine, CPU per message is steadier than messages per second.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
