package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
)

// storeConfig passes the policy's storage settings on to the buffer.
func TestStoreConfig(t *testing.T) {
	st := policies.Storage{Dir: "d", Fsync: policies.Fsync{Mode: policies.FsyncAlways}, Retention: time.Hour,
		MaxBytes: 1 << 30, MinFreeBytes: 1 << 20, SegmentBytes: 1 << 20}
	cfg := storeConfig(st, slog.Default())
	if cfg.Dir != "d" || cfg.Sync != buffer.SyncAlways || cfg.Retention != time.Hour || cfg.MaxBytes != 1<<30 ||
		cfg.MinFreeBytes != 1<<20 || cfg.SegmentBytes != 1<<20 {
		t.Fatalf("fsync always: %+v", cfg)
	}
	st.Fsync = policies.Fsync{Mode: policies.FsyncInterval, Interval: 10 * time.Millisecond}
	if cfg := storeConfig(st, slog.Default()); cfg.Sync != buffer.SyncInterval || cfg.SyncInterval != 10*time.Millisecond {
		t.Fatalf("fsync interval: %+v", cfg)
	}
	st.Fsync = policies.Fsync{Mode: policies.FsyncNever}
	if cfg := storeConfig(st, slog.Default()); cfg.Sync != buffer.SyncNever {
		t.Fatalf("fsync never: %+v", cfg)
	}
}

// TestNodeIDKept: the node id is kept in the data directory across starts;
// where it cannot be kept (here the directory cannot be made), a warning
// says so, whichever step failed.
func TestNodeIDKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var logs testutil.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	id := nodeID(dir, log)
	if len(id) != 16 || nodeID(dir, log) != id || logs.String() != "" {
		t.Fatalf("ids %q then %q; logs %q", id, nodeID(dir, log), logs.String())
	}

	taken := t.TempDir() // its node-id is a directory: WriteFile fails
	must(t, os.Mkdir(filepath.Join(taken, "node-id"), 0o755))
	file := filepath.Join(t.TempDir(), "file") // a directory in it: MkdirAll fails
	must(t, os.WriteFile(file, nil, 0o644))
	for _, bad := range []string{taken, filepath.Join(file, "data")} {
		logs = testutil.Buffer{}
		log := slog.New(slog.NewTextHandler(&logs, nil))
		if id := nodeID(bad, log); len(id) != 16 {
			t.Errorf("%s: id %q", bad, id)
		}
		if !strings.Contains(logs.String(), "cannot keep the node id") {
			t.Errorf("%s: no warning; logs %q", bad, logs.String())
		}
	}
}
