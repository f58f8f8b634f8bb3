package main

import (
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
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
