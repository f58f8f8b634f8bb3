package buffer

import (
	"encoding/binary"

	"github.com/sluice-proxy/sluice/store"

	bolt "go.etcd.io/bbolt"
)

// Idempotency keys. A keyed message's key travels in its record, so it is
// exactly as durable as the message and expires with its segment. The head
// keeps its keys in memory (SHA-256(key)[:16] -> seq | id tag | request
// fingerprint), rebuilt from its log at start; sealing a segment writes them
// to bucket "k" of its .db before the seal. A repeated key answers the first
// message's id and stores nothing when the request is the same one (the
// same store.Fingerprint of method, URI and body), and ErrKeyMismatch when
// it is another. The caller searches the sealed segments (newest first, in
// parallel with other callers); the writer searches the head and anything
// that rolled since, and the batch being written, so concurrent duplicates
// of one key store one message.
//
// The fingerprint is not stored in the record: it is computed from the
// record again when a head's log is scanned at start (or a lost .db is
// rebuilt from its log), one SHA-256 over each keyed message's method, URI
// and body. A segment sealed by a version that kept no fingerprints has
// 16-byte values in bucket "k": its keys match any request, as before.
//
// Cost: a sealed segment's key filter (see keyFilter) answers for most
// segments without a transaction; its bbolt file is asked only when the
// filter says maybe (~1% of absent keys), or when the segment has no
// readable filter (sealed by an older version, or the filter is damaged).
// The fingerprint adds one SHA-256 over the request per keyed append and 16
// bytes per key in memory (head) and in bucket "k".
var bucketKeys = []byte("k")

func keyHash(key []byte) [16]byte { return store.KeyHash(key) }

// value is t as stored in bucket "k": seq (8 bytes, big endian), tag (8)
// and fingerprint (16).
func (t keyTarget) value() []byte {
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 32), t.seq)
	v = append(v, t.tag[:]...)
	return append(v, t.fp[:]...)
}

// sameRequest reports whether a request with fingerprint fp repeats the one
// stored with fingerprint stored (zero: unknown, matches any).
func sameRequest(stored, fp [16]byte) bool { return stored == [16]byte{} || stored == fp }

// keyIn looks the key up in one segment's transaction.
func keyIn(tx *bolt.Tx, key [16]byte) (keyTarget, bool) {
	kb := tx.Bucket(bucketKeys)
	if kb == nil {
		return keyTarget{}, false
	}
	v := kb.Get(key[:])
	if len(v) != 16 && len(v) != 32 { // 16: sealed before fingerprints
		return keyTarget{}, false
	}
	t := keyTarget{seq: binary.BigEndian.Uint64(v)}
	copy(t.tag[:], v[8:16])
	copy(t.fp[:], v[16:])
	return t, true
}

// keyInSegment looks the key up in s, through its filter first.
func keyInSegment(s *segment, key [16]byte) (t keyTarget, ok bool) {
	if f := s.keyf.Load(); f != nil && !f.mayContain(key) {
		return keyTarget{}, false // certainly not in this segment: no transaction
	}
	safeView(s.db, func(tx *bolt.Tx) error {
		t, ok = keyIn(tx, key)
		return nil
	})
	return t, ok
}

// findKey searches every segment but the head, newest first, and returns
// the first message's id and request fingerprint. below is the first seq
// of the head at the time: the writer searches from there.
func (q *Queue) findKey(key [16]byte) (id ID, fp [16]byte, below uint64, found bool) {
	q.mu.Lock()
	if len(q.segs) == 0 {
		q.mu.Unlock()
		return ID{}, fp, 0, false
	}
	segs := append([]*segment(nil), q.segs[:len(q.segs)-1]...)
	below = q.segs[len(q.segs)-1].first
	q.mu.Unlock()
	for i := len(segs) - 1; i >= 0; i-- {
		if t, ok := keyInSegment(segs[i], key); ok {
			return store.NewID(t.seq, t.tag), t.fp, below, true
		}
	}
	return ID{}, fp, below, false
}

// findKeyFrom searches the segments starting at or above from, other than
// head (the writer searches head inside its own transaction).
func (q *Queue) findKeyFrom(from uint64, head *segment, key [16]byte) (keyTarget, bool) {
	q.mu.Lock()
	var segs []*segment
	for _, s := range q.segs {
		if s.first >= from && s != head {
			segs = append(segs, s)
		}
	}
	q.mu.Unlock()
	for _, s := range segs {
		if t, ok := keyInSegment(s, key); ok {
			return t, true
		}
	}
	return keyTarget{}, false
}
