package buffer

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

func rssFileKiB(t *testing.T) int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Skip("no RssFile")
	return 0
}

// Reading a backlog maps its pages into the process; dropMappings gives them
// back, so file-backed RSS does not grow with the backlog.
func TestDropMappingsReleasesPages(t *testing.T) {
	s, q := openTest(t, Config{SegmentBytes: 8 << 20}, "a")
	defer s.Close()
	for range 8 {
		appendN(t, q, 1000) // ~8 MiB per round
	}
	a, _ := q.Consumer("a")
	before := rssFileKiB(t)
	if n := len(fetchAll(t, a)); n != 8000 {
		t.Fatalf("fetched %d", n)
	}
	touched := rssFileKiB(t)
	q.dropMappings()
	after := rssFileKiB(t)
	t.Logf("RssFile: %d KiB before reading, %d after reading 8000 messages, %d after dropMappings", before, touched, after)
	if touched-before < 4<<10 {
		t.Skipf("reading did not map pages measurably (%d -> %d KiB)", before, touched)
	}
	if after > before+(touched-before)/4 {
		t.Fatalf("RssFile %d KiB after dropMappings; before reading %d, after %d", after, before, touched)
	}
}
