package testutil

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Untar unpacks the gzipped tar at path (a data directory kept in a
// package's testdata) into a new temporary directory and returns it.
func Untar(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	Must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	Must(t, err)
	dir := t.TempDir()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		Must(t, err)
		p := filepath.Join(dir, filepath.Clean(h.Name))
		if h.Typeflag == tar.TypeDir {
			Must(t, os.MkdirAll(p, 0o755))
			continue
		}
		Must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		Must(t, err)
		_, err = io.Copy(out, tr)
		Must(t, err)
		Must(t, out.Close())
	}
}
