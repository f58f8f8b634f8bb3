//go:build linux && race

package netio

import "syscall"

// Under the race detector, reads and writes go through syscall.Read and
// Write, whose annotations tell the detector that what one goroutine wrote
// to a socket happened before another read it (as net.Conn's do); raw
// system calls would make every test that hands data over a connection
// report races that are not there.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}
