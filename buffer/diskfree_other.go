//go:build !linux && !darwin && !freebsd && !windows

package buffer

import (
	"fmt"
	"runtime"
)

// diskFree is not implemented here: Open refuses Config.MinFreeBytes on
// such a system rather than guess.
func diskFree(dir string) (int64, error) {
	return 0, fmt.Errorf("free disk space is not known on %s", runtime.GOOS)
}
