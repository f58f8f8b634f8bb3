package buffer

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketMsgs = []byte("m")
	bucketInfo = []byte("info")
	keyFirst   = []byte("first")
	keyLastAt  = []byte("last_append")
)

func stateBucket(target string) []byte { return []byte("s/" + target) }
func retryBucket(target string) []byte { return []byte("r/" + target) }
func deadBucket(target string) []byte  { return []byte("d/" + target) }
func parkBucket(target string) []byte  { return []byte("p/" + target) }

func parkKey(key [16]byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, 24), key[:]...), seq)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq) }

func retryKey(at time.Time, seq uint64) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(at.UnixNano()))
	return binary.BigEndian.AppendUint64(k, seq)
}

func parseRetryKey(k []byte) (time.Time, uint64) {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), binary.BigEndian.Uint64(k[8:])
}

// segment is one bbolt file of a queue's log. Its fields other than db and
// first are guarded by Queue.mu; the file is written only by the queue's
// writer goroutine.
type segment struct {
	first      uint64 // seq of its first message (also in the file name)
	last       uint64 // seq of its last message; first-1 when empty
	lastAppend time.Time
	opened     time.Time // when it became the head (or was loaded): for SegmentAge
	size       int64     // bytes of data (bbolt's high-water mark, not the sparse file length)
	base       int64     // size when created (bbolt's own pages); rolls count the data above it
	retries    []int     // per target index: entries in the retry schedule
	parked     []int     // per target index: messages parked behind a key
	path       string
	db         *bolt.DB
}

func segmentName(first uint64) string { return fmt.Sprintf("seg-%016x.db", first) }

// listSegments returns the segment files of dir by first seq.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var firsts []uint64
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "seg-") || !strings.HasSuffix(n, ".db") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "seg-"), ".db"), 16, 64)
		if err != nil {
			continue
		}
		firsts = append(firsts, first)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	return firsts, nil
}

func boltOptions(cfg *Config) *bolt.Options {
	return &bolt.Options{
		Timeout: time.Second,
		// The freelist is synced: without it, Open walks every page of the
		// file (a full scan at start-up, and a damaged page would panic in a
		// goroutine of bbolt's that we cannot recover).
		NoFreelistSync: false,
		FreelistType:   bolt.FreelistMapType,
		NoSync:         cfg.Sync != SyncAlways,
		MaxSize:        cfg.maxFileBytes,
		// 16 KiB pages hold ~15 records of 1 KiB: a fifth of the nodes to
		// split and of the pwrites per commit of 4 KiB pages, for ~20% less
		// CPU per append (BenchmarkAppend). Files keep the size they were
		// created with.
		PageSize: 16 << 10,
		// Map the whole segment up front so a growing head never remaps
		// (a remap waits for every reader).
		InitialMmapSize: int(cfg.SegmentBytes + cfg.SegmentBytes/4),
	}
}

// createSegment makes a new, empty segment file whose first seq is first.
func createSegment(dir string, first uint64, targets []string, cfg *Config) (*segment, error) {
	path := filepath.Join(dir, segmentName(first))
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("segment %s already exists", path)
	}
	db, err := bolt.Open(path, 0o600, boltOptions(cfg))
	if err != nil {
		// bbolt creates the file before it writes the first pages: on a full
		// disk that leaves a truncated file, which would block every later
		// roll at this seq ("already exists") and read as damaged at start.
		os.Remove(path)
		return nil, err
	}
	now := cfg.Now()
	var size int64
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMsgs, bucketInfo} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		for _, t := range targets {
			if _, err := tx.CreateBucketIfNotExists(stateBucket(t)); err != nil {
				return err
			}
			if _, err := tx.CreateBucketIfNotExists(retryBucket(t)); err != nil {
				return err
			}
		}
		info := tx.Bucket(bucketInfo)
		if err := info.Put(keyFirst, seqKey(first)); err != nil {
			return err
		}
		size = tx.Size()
		return info.Put(keyLastAt, seqKey(uint64(now.UnixNano())))
	})
	if err != nil {
		db.Close()
		os.Remove(path)
		return nil, err
	}
	return &segment{first: first, last: first - 1, lastAppend: now, opened: now, size: size, base: size, path: path, db: db, retries: make([]int, len(targets)), parked: make([]int, len(targets))}, nil
}

// openSegment opens an existing segment and reads what the queue keeps in
// memory about it: last seq, time of last append, retry counts. It reads no
// messages.
func openSegment(dir string, first uint64, targets []string, cfg *Config) (*segment, error) {
	path := filepath.Join(dir, segmentName(first))
	db, err := openBolt(path, boltOptions(cfg))
	if err != nil {
		return nil, err
	}
	s := &segment{first: first, last: first - 1, path: path, db: db, opened: cfg.Now(), retries: make([]int, len(targets)), parked: make([]int, len(targets))}
	err = safeUpdate(db, func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMsgs)
		info := tx.Bucket(bucketInfo)
		if m == nil || info == nil {
			return fmt.Errorf("%w: segment %s has no message or info bucket", ErrCorrupt, path)
		}
		if k, _ := m.Cursor().Last(); k != nil {
			s.last = binary.BigEndian.Uint64(k)
		}
		if v := info.Get(keyLastAt); len(v) == 8 {
			s.lastAppend = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		}
		for i, t := range targets {
			if _, err := tx.CreateBucketIfNotExists(stateBucket(t)); err != nil {
				return err
			}
			r, err := tx.CreateBucketIfNotExists(retryBucket(t))
			if err != nil {
				return err
			}
			s.retries[i] = r.Stats().KeyN
			if pb := tx.Bucket(parkBucket(t)); pb != nil {
				s.parked[i] = pb.Stats().KeyN
			}
		}
		s.size = tx.Size()
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}
