package buffer

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/windows"
)

// mapFile reads the first size bytes of f. Windows gets a copy rather than a
// mapping: the scans that use it read a segment once, front to back, and a
// segment is bounded by Config.SegmentBytes (plus one commit).
func mapFile(f *os.File, size int64) (data []byte, unmap func(), err error) {
	data = make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil && err != io.EOF {
		return nil, nil, err
	}
	return data, func() {}, nil
}

// allocatedBytes returns the file's size: Windows does not report its
// allocation through os.FileInfo.
func allocatedBytes(fi os.FileInfo) int64 { return fi.Size() }

// diskFree returns the bytes available to this process on dir's volume.
func diskFree(dir string) (int64, error) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, err
	}
	var avail, total, free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return 0, fmt.Errorf("GetDiskFreeSpaceEx %s: %w", dir, err)
	}
	return int64(avail), nil
}
