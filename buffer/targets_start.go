package buffer

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// A target's first seq. A target added to a route that already has
// messages starts at the end of the log; the messages before it were
// never meant for it. cursors.db's bucket "starts" records, for each
// target first seen by this version, the seq it started at; a target
// without a record (seen first by an earlier version) starts at 0. The
// list and the counts leave a message out of a target's when its seq is
// below the target's start, and the retention does not count it as
// expired for that target.

var bucketStarts = []byte("starts")

// loadStarts records start as the first seq of the targets in fresh
// (seen for the first time), then reads every target's. Called by load.
func (q *Queue) loadStarts(fresh []string, start uint64) error {
	if len(fresh) > 0 {
		err := q.floorsDB.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketStarts)
			if err != nil {
				return err
			}
			for _, t := range fresh {
				if err := b.Put([]byte(t), seqKey(start)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	q.starts = make([]uint64, len(q.targets))
	starts, err := readStarts(q.floorsDB)
	for i, t := range q.targets {
		q.starts[i] = starts[t]
	}
	return err
}

// readStarts reads the recorded first seqs by target name.
func readStarts(db *bolt.DB) (map[string]uint64, error) {
	out := map[string]uint64{}
	err := safeView(db, func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketStarts); b != nil {
			return b.ForEach(func(k, v []byte) error {
				if len(v) == 8 {
					out[string(k)] = binary.BigEndian.Uint64(v)
				}
				return nil
			})
		}
		return nil
	})
	return out, err
}
