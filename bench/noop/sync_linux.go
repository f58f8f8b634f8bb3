package main

import (
	"os"
	"syscall"
)

// fdatasync is what sluice's writer calls with fsync: always.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
