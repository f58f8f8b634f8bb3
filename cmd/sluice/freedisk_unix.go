//go:build linux || darwin || freebsd

package main

import "syscall"

// freeDisk returns the bytes available to unprivileged users on dir's file
// system, for the admin API's state and /metrics. (buffer computes the same
// for its free-disk floor but does not export it.)
func freeDisk(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
