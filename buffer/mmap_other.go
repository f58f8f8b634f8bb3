//go:build !linux

package buffer

import bolt "go.etcd.io/bbolt"

func dropMapped(db *bolt.DB, size int64) {}
