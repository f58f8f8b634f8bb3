package buffer

import (
	"os"
	"syscall"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// dropMapped tells the kernel that this process no longer needs the pages
// of db's read-only shared mapping (MADV_DONTNEED). The data stays in the
// page cache and on disk; a later read faults the pages back in. It keeps
// the process's file-backed RSS from growing with the backlog: bbolt reads
// every page it appends once through the mapping, and readers walk whole
// segments.
func dropMapped(db *bolt.DB, size int64) {
	if size <= 0 {
		return
	}
	ps := int64(os.Getpagesize())
	n := (size + ps - 1) / ps * ps
	// The mapping is at least as long as the data (bbolt maps the whole file
	// and more); Data is its start.
	syscall.Syscall(syscall.SYS_MADVISE, db.Info().Data, uintptr(n), syscall.MADV_DONTNEED)
}

// fdatasync flushes f's data (and only the metadata needed to read it back).
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// startWriteback asks the kernel to start writing f's dirty pages in
// [off, off+n) to disk, and returns at once: no wait, no durability point
// (sync_file_range with SYNC_FILE_RANGE_WRITE only).
func startWriteback(f *os.File, off, n int64) error {
	return unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
