package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketInfo = []byte("info")
	keyFirst   = []byte("first")
	keyLastAt  = []byte("last_append")
	keySealed  = []byte("sealed") // message count, written when the segment stops being the head
	// keyStaleBelow is set when the segment's log is a recycled file: its
	// old frames all have seqs below this (see takeSpare).
	keyStaleBelow = []byte("stale_below")

	// bucketOldRecords held the messages before they moved to .log files.
	bucketOldRecords = []byte("m")
)

// errOldFormat: a segment written by a version that kept messages in bbolt.
// Start-up refuses it whole rather than treat it as damage: nothing is moved
// or deleted.
var errOldFormat = errors.New("buffer: data directory of an older format")

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

// segment is one piece of a queue's log: its messages in a log file (see
// logfile.go) and their per-target state in a bbolt file. Its fields other
// than db, log and first are guarded by Queue.mu; the files are written only
// by the queue's writer goroutine.
type segment struct {
	first      uint64 // seq of its first message (also in the file names)
	last       uint64 // seq of its last message; first-1 when empty
	lastAppend time.Time
	opened     time.Time // when it became the head (or was loaded): for SegmentAge
	size       int64     // bytes: dbSize + the log's length
	dbSize     int64     // the bbolt file's high-water mark (not the sparse file length)
	retries    []int     // per target index: entries in the retry schedule
	parked     []int     // per target index: messages parked behind a key
	path       string    // of the bbolt file
	db         *bolt.DB
	log        *segLog
	sealed     bool
	keyf       atomic.Pointer[keyFilter] // sealed: its keys' filter; nil: unknown, ask the bbolt file
}

// files are the segment's files, the bbolt file last: a segment exists as
// long as its bbolt file does.
func segmentFiles(dir string, first uint64) []string {
	return []string{filepath.Join(dir, idxName(first)), filepath.Join(dir, logName(first)), filepath.Join(dir, segmentName(first))}
}

// deletingName is the marker of a segment deletion under way: written
// (and its directory synced) before the first of the segment's files goes,
// removed after the last. It is the only proof start-up accepts that a log
// without its bbolt file is the leftover of sluice's own deletion; any other
// such log holds messages and is recovered (see rebuildSegment).
func deletingName(first uint64) string { return fmt.Sprintf("seg-%016x.deleting", first) }

// removeSegmentFiles deletes a segment (see retireSegmentFiles).
func removeSegmentFiles(dir string, first uint64) error {
	return retireSegmentFiles(dir, first, 0)
}

// retireSegmentFiles deletes a segment: the deletion marker first, then the
// bbolt file, the log and the index, then the marker, so that a crash
// half-way leaves files that start-up recognises as the leftovers of a
// deletion. With spareBound > 0 the log is kept as a spare for a later head
// (see takeSpare): every seq in it is below spareBound.
func retireSegmentFiles(dir string, first, spareBound uint64) error {
	marker := filepath.Join(dir, deletingName(first))
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		return fmt.Errorf("mark segment for deletion: %w", err)
	}
	syncDir(dir)
	fs := segmentFiles(dir, first)
	err := os.Remove(fs[2])
	if os.IsNotExist(err) {
		err = nil
	}
	if err == nil && spareBound > 0 {
		if rerr := os.Rename(fs[1], filepath.Join(dir, spareName(spareBound))); rerr == nil {
			fs = fs[:1]
		}
	}
	for _, f := range fs[:min(2, len(fs))] {
		if rerr := os.Remove(f); rerr != nil && !os.IsNotExist(rerr) && err == nil {
			err = rerr
		}
	}
	if err == nil {
		syncDir(dir)
		err = os.Remove(marker)
	}
	return err
}

// finishDeletions completes the segment deletions a crash interrupted: every
// segment with a deletion marker loses what is left of its files. It returns
// the first seqs of the segments it removed.
func finishDeletions(dir string) []uint64 {
	paths, _ := filepath.Glob(filepath.Join(dir, "seg-*.deleting"))
	var done []uint64
	for _, p := range paths {
		var first uint64
		if _, err := fmt.Sscanf(filepath.Base(p), "seg-%016x.deleting", &first); err != nil || filepath.Base(p) != deletingName(first) {
			continue
		}
		if removeSegmentFiles(dir, first) == nil {
			done = append(done, first)
		}
	}
	return done
}

// orphanLogs returns the first seqs of dir's segment logs that have no bbolt
// file (and no deletion marker: finishDeletions ran first), by first seq.
func orphanLogs(dir string, have map[uint64]bool) []uint64 {
	paths, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	var out []uint64
	for _, p := range paths {
		var first uint64
		if _, err := fmt.Sscanf(filepath.Base(p), "seg-%016x.log", &first); err != nil || filepath.Base(p) != logName(first) || have[first] {
			continue
		}
		out = append(out, first)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// rebuildSegment gives the segment whose first seq is first a new bbolt
// file, made from its log, when its own is missing or damaged: the messages
// are all in the log (its frames carry their seqs and checksums); what is
// lost is the delivery state the old file held, so the caller must have
// every target deliver the segment again (see Queue.load). The new file is
// unsealed: opening it scans the log and rebuilds the index and the
// idempotency keys; sealing (if it is not the head) writes them. It returns
// the number of messages the log holds; with none, the log is removed and no
// segment is made.
func rebuildSegment(dir string, first uint64, targets []string, cfg *Config) (uint64, error) {
	lpath := filepath.Join(dir, logName(first))
	// Frames below first are a recycled file's old content (a spare's seqs
	// are all below the first of the segment that took it).
	sc, err := scanLog(lpath, first, first, false)
	if err != nil {
		return 0, err
	}
	n := uint64(len(sc.locs))
	if n == 0 {
		return 0, removeSegmentFiles(dir, first)
	}
	path := filepath.Join(dir, segmentName(first))
	os.Remove(filepath.Join(dir, idxName(first))) // made again at seal
	opts := boltOptions(cfg)
	opts.NoSync = false
	db, err := bolt.Open(path, 0o600, opts)
	if err != nil {
		os.Remove(path)
		return 0, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		info, err := tx.CreateBucketIfNotExists(bucketInfo)
		if err != nil {
			return err
		}
		for _, t := range targets {
			if _, err := tx.CreateBucketIfNotExists(stateBucket(t)); err != nil {
				return err
			}
			if _, err := tx.CreateBucketIfNotExists(retryBucket(t)); err != nil {
				return err
			}
		}
		if err := info.Put(keyFirst, seqKey(first)); err != nil {
			return err
		}
		if err := info.Put(keyStaleBelow, seqKey(first)); err != nil {
			return err
		}
		return info.Put(keyLastAt, seqKey(uint64(sc.lastAt.UnixNano())))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return 0, err
	}
	syncDir(dir)
	return n, nil
}

// Spare logs. Appending to a new file makes every fdatasync also commit
// the file system's metadata (the file's size, its new blocks); writing over
// blocks a file already has makes it flush the data alone, which on the
// machine of bench/journal/2026-12-01-to-05.md ("a log on blocks that are already written") costs
// half as much. So, as PostgreSQL recycles WAL segments, a deleted segment's
// log is renamed spare-<bound>.log (bound: every seq in it is below that)
// and the next new head takes it over instead of creating an empty file.
// Its old frames are told from the new ones by their seqs: scanLog stops at
// the first frame below the bound recorded in the segment (keyStaleBelow),
// and sealing truncates the log to what it holds.
const maxSpares = 2

func spareName(bound uint64) string { return fmt.Sprintf("spare-%016x.log", bound) }

// spares returns dir's spare logs by bound, lowest first.
func spares(dir string) (paths []string, bounds []uint64) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		var b uint64
		if _, err := fmt.Sscanf(e.Name(), "spare-%016x.log", &b); err == nil && e.Name() == spareName(b) {
			paths, bounds = append(paths, filepath.Join(dir, e.Name())), append(bounds, b)
		}
	}
	return paths, bounds
}

// takeSpare picks a spare log for a new segment whose first seq is first
// and returns its path and bound, or "" and 0 when there is none. A spare
// whose bound is above first (seqs that could pass for the new segment's)
// is deleted, never used. The caller records the bound in the segment
// before it renames the spare to the segment's log: a crash in between
// leaves a segment without a log, which opens as empty.
func takeSpare(dir string, first uint64) (string, uint64) {
	paths, bounds := spares(dir)
	for i := len(paths) - 1; i >= 0; i-- {
		if bounds[i] > first || bounds[i] == 0 {
			os.Remove(paths[i])
			continue
		}
		return paths[i], bounds[i]
	}
	return "", 0
}

func segmentName(first uint64) string { return fmt.Sprintf("seg-%016x.db", first) }

// segLabel names a segment (all three of its files) in log lines.
func segLabel(first uint64) string { return fmt.Sprintf("seg-%016x", first) }

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
	var spare string
	var staleBelow uint64
	if !cfg.noSpares {
		spare, staleBelow = takeSpare(dir, first)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketInfo); err != nil {
			return err
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
		if staleBelow > 0 {
			if err := info.Put(keyStaleBelow, seqKey(staleBelow)); err != nil {
				return err
			}
		}
		size = tx.Size()
		return info.Put(keyLastAt, seqKey(uint64(now.UnixNano())))
	})
	var lf *os.File
	var recycled int64 // the spare's size, when the log is one
	if err == nil {
		lpath := filepath.Join(dir, logName(first))
		onSpare := spare != "" && os.Rename(spare, lpath) == nil
		flags := os.O_CREATE | os.O_TRUNC | os.O_RDWR
		if onSpare {
			flags = os.O_RDWR // its blocks are what it is for
		}
		lf, err = os.OpenFile(lpath, flags, 0o600)
		if err == nil && onSpare {
			if fi, serr := lf.Stat(); serr == nil {
				recycled = fi.Size()
			}
		}
	}
	if err != nil {
		db.Close()
		removeSegmentFiles(dir, first)
		return nil, err
	}
	syncDir(dir)
	return &segment{first: first, last: first - 1, lastAppend: now, opened: now, size: size, dbSize: size, path: path, db: db,
		log:     &segLog{f: lf, path: filepath.Join(dir, logName(first)), first: first, staleBelow: staleBelow, recycled: recycled, mem: &locList{}, keys: map[[16]byte]keyTarget{}},
		retries: make([]int, len(targets)), parked: make([]int, len(targets))}, nil
}

// syncDir fsyncs a directory, so that files created in it survive a power loss.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// openSegment opens an existing segment and reads what the queue keeps in
// memory about it: last seq, time of last append, retry counts. A sealed
// segment's messages are not read; an unsealed one (the head, or one whose
// roll a crash interrupted) has its log read once to rebuild its index, and a
// torn frame at its end is cut off.
func openSegment(dir string, first uint64, targets []string, cfg *Config, logger interface {
	Warn(string, ...any)
}) (*segment, error) {
	path := filepath.Join(dir, segmentName(first))
	db, err := openBolt(path, boltOptions(cfg))
	if err != nil {
		return nil, err
	}
	s := &segment{first: first, last: first - 1, path: path, db: db, opened: cfg.Now(), retries: make([]int, len(targets)), parked: make([]int, len(targets))}
	var sealed, staleBelow uint64
	var filterErr error
	err = safeUpdate(db, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketOldRecords) != nil {
			return fmt.Errorf("%w: segment %s keeps its messages inside bbolt (bucket \"m\"); this version reads them from .log files. Drain the queue with the version that wrote it, or move the data directory away", errOldFormat, path)
		}
		info := tx.Bucket(bucketInfo)
		if info == nil {
			return fmt.Errorf("%w: segment %s has no info bucket", ErrCorrupt, path)
		}
		if v := info.Get(keyLastAt); len(v) == 8 {
			s.lastAppend = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		}
		if v := info.Get(keyStaleBelow); len(v) == 8 {
			// Never above first: frames of the segment's own seqs must
			// not pass for stale, whatever the file says.
			staleBelow = min(binary.BigEndian.Uint64(v), first)
		}
		if v := info.Get(keySealed); len(v) == 8 {
			s.sealed, sealed = true, binary.BigEndian.Uint64(v)
			if v := info.Get(keyKeyFilter); v != nil {
				if f, ferr := unmarshalKeyFilter(v); ferr == nil {
					s.keyf.Store(f)
				} else {
					filterErr = ferr
				}
			}
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
		s.dbSize = tx.Size()
		return nil
	})
	if filterErr != nil {
		// Costs time, never a duplicate: the segment's keys are looked up in
		// its bbolt file, as for a segment sealed before filters existed.
		logger.Warn("segment key filter unreadable; idempotency keys are looked up in its bbolt file", "segment", segLabel(first), "err", filterErr)
	}
	if err == nil {
		err = s.openLog(dir, sealed, staleBelow, logger)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	s.size = s.dbSize + s.log.end
	return s, nil
}

func (s *segment) openLog(dir string, sealed, staleBelow uint64, logger interface{ Warn(string, ...any) }) error {
	lpath := filepath.Join(dir, logName(s.first))
	l := &segLog{path: lpath, first: s.first, staleBelow: staleBelow}
	fi, err := os.Stat(lpath)
	if os.IsNotExist(err) && (!s.sealed || sealed == 0) {
		// Created but never written (a crash inside createSegment).
		if err := os.WriteFile(lpath, nil, 0o600); err != nil {
			return err
		}
		fi, err = os.Stat(lpath)
	}
	if err != nil {
		return fmt.Errorf("%w: log of %s: %v", ErrCorrupt, s.path, err)
	}
	if l.f, err = os.OpenFile(lpath, os.O_RDWR, 0); err != nil {
		return err
	}
	if s.sealed {
		l.n, l.end = sealed, fi.Size()
		if l.idx, err = openIndex(filepath.Join(dir, idxName(s.first)), sealed); err == nil {
			s.log, s.last = l, s.first+sealed-1
			return nil
		}
		logger.Warn("segment index unreadable; rebuilding it from the log", "segment", segLabel(s.first), "err", err)
	}
	sc, err := scanLog(lpath, s.first, staleBelow, !s.sealed)
	if err != nil {
		l.f.Close()
		return err
	}
	for _, d := range sc.damaged {
		logger.Warn("segment log damaged; the messages in the damaged region are not served", "segment", segLabel(s.first), "damage", d.Err)
	}
	l.n, l.end = uint64(len(sc.locs)), sc.end
	if s.sealed {
		if l.n != sealed {
			logger.Warn("segment log holds a different count than its seal", "segment", segLabel(s.first), "sealed", sealed, "log", l.n)
		}
		ipath := filepath.Join(dir, idxName(s.first))
		if err = writeIndex(ipath, sc.locs); err == nil {
			l.idx, err = openIndex(ipath, l.n)
		}
		if err != nil {
			l.f.Close()
			return err
		}
	} else {
		// A recycled file's stale frames (sc.stale) stay: the head writes
		// over them.
		if sc.stale > 0 && sc.tail == 0 {
			l.recycled = fi.Size()
		}
		if sc.tail > 0 {
			// A torn write from a crash (with SyncAlways never acknowledged),
			// or damage at the very end; either way nothing after it is whole.
			logger.Warn("segment log: cutting off an incomplete frame at its end", "segment", segLabel(s.first), "bytes", sc.tail)
			if err := l.f.Truncate(sc.end); err != nil {
				l.f.Close()
				return err
			}
		}
		l.mem, l.keys = newLocList(sc.locs), sc.keys
		if l.n > 0 {
			s.lastAppend = sc.lastAt
		}
	}
	s.log, s.last = l, s.first+l.n-1
	return nil
}

// seal makes s a closed segment: its index goes to its .idx file, its
// idempotency keys into its bbolt file, and its message count last, as the
// seal. Writer only; the log is synced first.
func (s *segment) seal(dir string) error {
	l := s.log
	l.mu.RLock()
	locs := l.mem.blocks
	n := l.n
	l.mu.RUnlock()
	if l.staleBelow > 0 {
		// A recycled file: cut off what it held before, so that a sealed
		// log is exactly its frames (its size is its length in the
		// accounting, and nothing stale is left for a later scan).
		if err := l.f.Truncate(l.end); err != nil {
			return err
		}
	}
	if err := l.f.Sync(); err != nil {
		return err
	}
	ipath := filepath.Join(dir, idxName(s.first))
	if err := writeIndex(ipath, locs...); err != nil {
		return err
	}
	idx, err := openIndex(ipath, n)
	if err != nil {
		return err
	}
	kf := newKeyFilter(len(l.keys))
	for k := range l.keys {
		kf.add(k)
	}
	err = safeUpdate(s.db, func(tx *bolt.Tx) error {
		if len(l.keys) > 0 {
			kb, err := tx.CreateBucketIfNotExists(bucketKeys)
			if err != nil {
				return err
			}
			for k, t := range l.keys {
				if err := kb.Put(k[:], t.value()); err != nil {
					return err
				}
			}
		}
		info := tx.Bucket(bucketInfo)
		if err := info.Put(keyLastAt, seqKey(uint64(s.lastAppend.UnixNano()))); err != nil {
			return err
		}
		if err := info.Put(keyKeyFilter, kf.marshal()); err != nil {
			return err
		}
		return info.Put(keySealed, seqKey(n))
	})
	if err == nil {
		err = s.db.Sync() // sealed whatever the fsync mode: the .idx is already synced
	}
	if err != nil {
		idx.Close()
		os.Remove(ipath)
		return err
	}
	l.mu.Lock()
	l.idx, l.mem = idx, nil
	l.mu.Unlock()
	l.keys = nil
	s.keyf.Store(kf)
	s.sealed = true
	return nil
}

// close closes the segment's files.
func (s *segment) close() error {
	err := s.db.Close()
	if s.log != nil {
		s.log.f.Close()
		if s.log.idx != nil {
			s.log.idx.Close()
		}
	}
	return err
}
