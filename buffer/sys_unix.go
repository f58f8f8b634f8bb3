//go:build unix

package buffer

import (
	"os"
	"syscall"
)

// mapFile maps the first size bytes of f read-only. The caller must not use
// the bytes after calling unmap.
func mapFile(f *os.File, size int64) (data []byte, unmap func(), err error) {
	data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return data, func() { syscall.Munmap(data) }, nil
}

// allocatedBytes returns the bytes fi's file occupies on disk (its blocks),
// which for a sparse or preallocated file differs from its size.
func allocatedBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return fi.Size()
}
