package buffer

import (
	"encoding/binary"
	"github.com/sluice-proxy/sluice/store"

	bolt "go.etcd.io/bbolt"
)

// Idempotency keys. A keyed message's key travels in its record, so it is
// exactly as durable as the message and expires with its segment. The head
// keeps its keys in memory (SHA-256(key)[:16] -> seq | id tag), rebuilt from
// its log at start; sealing a segment writes them to bucket "k" of its .db
// before the seal. A repeated key answers the first message's id and stores
// nothing. The caller searches the sealed segments (newest first, in
// parallel with other callers); the writer searches the head and anything
// that rolled since, and the batch being written, so concurrent duplicates
// of one key store one message.
//
// Cost: a sealed segment's key filter (see keyFilter) answers for most
// segments without a transaction; its bbolt file is asked only when the
// filter says maybe (~1% of absent keys), or when the segment has no
// readable filter (sealed by an older version, or the filter is damaged).
var bucketKeys = []byte("k")

func keyHash(key []byte) [16]byte { return store.KeyHash(key) }

// keyIn looks the key up in one segment's transaction and returns the
// message's seq and id tag.
func keyIn(tx *bolt.Tx, key [16]byte) (uint64, [8]byte, bool) {
	kb := tx.Bucket(bucketKeys)
	if kb == nil {
		return 0, [8]byte{}, false
	}
	v := kb.Get(key[:])
	if len(v) != 16 {
		return 0, [8]byte{}, false
	}
	var tag [8]byte
	copy(tag[:], v[8:])
	return binary.BigEndian.Uint64(v), tag, true
}

// findKey searches every segment but the head, newest first. below is the
// first seq of the head at the time: the writer searches from there.
func (q *Queue) findKey(key [16]byte) (id ID, below uint64, found bool) {
	q.mu.Lock()
	if len(q.segs) == 0 {
		q.mu.Unlock()
		return ID{}, 0, false
	}
	segs := append([]*segment(nil), q.segs[:len(q.segs)-1]...)
	below = q.segs[len(q.segs)-1].first
	q.mu.Unlock()
	for i := len(segs) - 1; i >= 0; i-- {
		if f := segs[i].keyf.Load(); f != nil && !f.mayContain(key) {
			continue // certainly not in this segment: no transaction
		}
		var seq uint64
		var tag [8]byte
		var ok bool
		safeView(segs[i].db, func(tx *bolt.Tx) error {
			seq, tag, ok = keyIn(tx, key)
			return nil
		})
		if ok {
			return store.NewID(seq, tag), below, true
		}
	}
	return ID{}, below, false
}

// findKeyFrom searches the segments starting at or above from, other than
// head (the writer searches head inside its own transaction).
func (q *Queue) findKeyFrom(from uint64, head *segment, key [16]byte) (uint64, [8]byte, bool) {
	q.mu.Lock()
	var segs []*segment
	for _, s := range q.segs {
		if s.first >= from && s != head {
			segs = append(segs, s)
		}
	}
	q.mu.Unlock()
	for _, s := range segs {
		if f := s.keyf.Load(); f != nil && !f.mayContain(key) {
			continue
		}
		var seq uint64
		var tag [8]byte
		var ok bool
		safeView(s.db, func(tx *bolt.Tx) error {
			seq, tag, ok = keyIn(tx, key)
			return nil
		})
		if ok {
			return seq, tag, true
		}
	}
	return 0, [8]byte{}, false
}
