package buffer

import (
	"encoding/binary"
	"encoding/json"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tombstones of expired messages. When the retention deletes a segment, a
// message that some target had not finished (queued, retrying or parked)
// would vanish from every list and count. Before the segment's files go,
// the writer records one small record per such message in the queue's
// cursors.db, bucket "expired": seq -> JSON {tag, accepted at, expired at,
// idempotency key, and per unfinished target its name, phase, attempts and
// last status}. Never the body: 125 to 160 bytes of JSON plus the key per
// message with one unfinished target, up to 50 more per further target
// (TestTombstoneSize); one bbolt transaction per deleted segment. Lister
// lists them with phase Expired, and Counts counts them, for one more
// retention after the expiry; then the writer's retention pass deletes
// them, oldest first.
//
// A crash between the tombstones' commit and the segment's deletion leaves
// both: the next pass writes the same tombstones again (same keys) and
// deletes the segment. Messages in the segment that every target had
// finished leave no tombstone: their status ends with the segment, as
// before.

var bucketExpired = []byte("expired")

// tombstone is an expired message, as remembered.
type tombstone struct {
	Tag     [8]byte      `json:"tag"`
	At      int64        `json:"at"`      // accepted, unix ns
	Expired int64        `json:"expired"` // unix ns
	Key     string       `json:"key,omitempty"`
	Targets []tombTarget `json:"targets"`
}

// tombTarget is where the message stood for one target when it expired.
type tombTarget struct {
	Name     string `json:"t"`
	Was      Phase  `json:"was"`
	Attempts int    `json:"n,omitempty"`
	Status   int    `json:"s,omitempty"`
}

func (t *tombTarget) reason() string {
	r := "the retention deleted it while " + string(t.Was)
	if t.Status > 0 {
		r += " (last status " + strconv.Itoa(t.Status) + ")"
	}
	return r
}

// expireSegment counts, per target index, the messages of s that the
// target has not finished (next[i] is the target's read cursor: a seq at
// or above it was never fetched), and records a tombstone for each message
// with at least one such target before s is deleted. Writer only.
func (q *Queue) expireSegment(s *segment, next []uint64) []uint64 {
	n := make([]uint64, len(q.targets))
	q.mu.Lock()
	first, last := s.first, s.last
	q.mu.Unlock()
	now := q.cfg.Now().UnixNano()
	var stones []uint64
	var recs [][]byte
	var buf []byte
	safeView(s.db, func(tx *bolt.Tx) error {
		states := make([]*stateReader, len(q.targets))
		for i, t := range q.targets {
			states[i] = newStateReader(tx, t)
		}
		for seq := first; seq <= last; seq++ {
			var ts *tombstone
			for i, t := range q.targets {
				if seq < q.starts[i] {
					continue // before the target existed: not its message
				}
				tt := tombTarget{Name: t, Was: Queued}
				if seq < next[i] {
					if v := states[i].get(seq); v != nil {
						st, err := decodeState(v)
						if err == nil && st.Phase != Retrying && st.Phase != Parked {
							continue
						}
						if err == nil {
							tt.Was, tt.Attempts = st.Phase, st.Attempts
							if a, ok := st.Last(); ok {
								tt.Status = a.Status
							}
						}
					}
				}
				n[i]++
				if ts == nil {
					ts = &tombstone{Expired: now}
					if rec, err := s.log.read(seq, buf[:0]); err == nil {
						buf = rec
						at, tag, key := recordHead(rec)
						ts.Tag, ts.At, ts.Key = tag, at.UnixNano(), string(key)
					}
				}
				ts.Targets = append(ts.Targets, tt)
			}
			if ts != nil {
				b, err := json.Marshal(ts)
				if err != nil {
					continue
				}
				stones = append(stones, seq)
				recs = append(recs, b)
			}
		}
		return nil
	})
	if len(stones) > 0 {
		err := q.floorsDB.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketExpired)
			if err != nil {
				return err
			}
			for i, seq := range stones {
				if err := b.Put(seqKey(seq), recs[i]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			q.log.Error("cannot record the expired messages of a segment; they are counted, not listed", "segment", segLabel(s.first), "err", err)
		}
	}
	return n
}

// pruneTombstones deletes tombstones older than the retention (by their
// expiry), oldest first, at most 10000 a pass. A tombstone that does not
// decode cannot be listed or counted: it is deleted too, and logged with
// its seq (inspect --verify reports it before). Writer only.
func (q *Queue) pruneTombstones() {
	cut := q.cfg.Now().Add(-q.cfg.Retention).UnixNano()
	var old [][]byte
	var bad []uint64
	q.floorsDB.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketExpired)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(old) < 10000; k, v = c.Next() {
			var ts tombstone
			if err := json.Unmarshal(v, &ts); err != nil || len(k) != 8 {
				bad = append(bad, seqOfKey(k))
			} else if ts.Expired >= cut {
				break // expired in order of seq, so the rest are younger
			}
			old = append(old, append([]byte(nil), k...))
		}
		return nil
	})
	if len(old) == 0 {
		return
	}
	err := q.floorsDB.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketExpired)
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		q.log.Error("cannot delete old tombstones of expired messages", "err", err)
		return
	}
	if len(bad) > 0 {
		q.log.Error("deleted tombstones of expired messages that do not decode: those messages are no longer listed or counted as expired",
			"count", len(bad), "seqs", bad)
	}
}

// seqOfKey is the seq of a bucket key, 0 if the key is not 8 bytes.
func seqOfKey(k []byte) uint64 {
	if len(k) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k)
}

// badTombstones returns the seqs of the tombstones in db that do not decode
// (0 for a key that is not a seq), for inspect --verify.
func badTombstones(db *bolt.DB) (seqs []uint64) {
	safeView(db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketExpired)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var ts tombstone
			if len(k) != 8 || json.Unmarshal(v, &ts) != nil {
				seqs = append(seqs, seqOfKey(k))
			}
			return nil
		})
	})
	return seqs
}

// tombstonesAfter returns up to n tombstones with a seq above after, in
// seq order, read in one short transaction (callers act on them after it:
// a slow reader must not hold a transaction of cursors.db, whose writes
// the writer would then wait for).
func tombstonesAfter(db *bolt.DB, after uint64, n int) (seqs []uint64, stones []*tombstone, err error) {
	err = safeView(db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketExpired)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(seqs) < n; k, v = c.Next() {
			var ts tombstone
			if len(k) != 8 || json.Unmarshal(v, &ts) != nil {
				continue
			}
			seqs = append(seqs, binary.BigEndian.Uint64(k))
			stones = append(stones, &ts)
		}
		return nil
	})
	return seqs, stones, err
}

// eachTombstone calls fn with every tombstone with a seq above after, in
// seq order, until fn returns false; listChunk at a time.
func eachTombstone(db *bolt.DB, after uint64, fn func(seq uint64, ts *tombstone) bool) error {
	for {
		seqs, stones, err := tombstonesAfter(db, after, listChunk)
		if err != nil {
			return err
		}
		for i, seq := range seqs {
			if !fn(seq, stones[i]) {
				return nil
			}
			after = seq
		}
		if len(seqs) < listChunk {
			return nil
		}
	}
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
