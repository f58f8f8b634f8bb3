package buffer

import (
	"os"
	"path/filepath"
	"testing"
)

// The free-disk floor and inspect's sizes rest on these; a system whose
// answers are wrong would refuse every append or report nonsense.
func TestDiskFreeAndAllocated(t *testing.T) {
	dir := t.TempDir()
	free, err := diskFree(dir)
	if err != nil || free <= 0 {
		t.Fatalf("diskFree(%s) = %d, %v; want > 0", dir, free, err)
	}
	if _, err := diskFree(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("diskFree of a missing directory: no error")
	}

	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := allocated(p); n < 64<<10 {
		t.Fatalf("allocated = %d for 64 KiB written, want at least that", n)
	}

	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, unmap, err := mapFile(f, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 64<<10 || data[len(data)-1] != 0 {
		t.Fatalf("mapFile: %d bytes", len(data))
	}
	unmap()
}
