package buffer

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropCache asks the kernel to drop f's (clean) pages from the page cache.
func dropCache(f *os.File) { unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED) }

// readBytes is what this process has made the kernel read from disk so far
// (read_bytes of /proc/self/io); -1 if unknown.
func readBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "read_bytes: "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}
