//go:build linux

package netio

import "syscall"

// RawRead and RawWrite are read(2) and write(2) of a non-blocking socket
// without the scheduler's system call bookkeeping (see rawIO): for the
// proxy's event loops, whose sockets never block. On an error n is not
// meaningful; 0 and no error from RawRead is the end of the stream.
func RawRead(fd int, p []byte) (n int, errno syscall.Errno) { return sysRead(uintptr(fd), p) }

// RawWrite: see RawRead.
func RawWrite(fd int, p []byte) (n int, errno syscall.Errno) { return sysWrite(uintptr(fd), p) }
