//go:build !linux

package buffer

import (
	"os"

	bolt "go.etcd.io/bbolt"
)

func dropMapped(db *bolt.DB, size int64) {}

func fdatasync(f *os.File) error { return f.Sync() }

func startWriteback(f *os.File, off, n int64) error { return nil }
