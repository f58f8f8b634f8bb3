//go:build !linux && !darwin && !freebsd

package main

import "errors"

// freeDisk is not implemented here: the state and /metrics leave it out.
func freeDisk(dir string) (int64, error) {
	return 0, errors.New("free disk space is not read on this system")
}
