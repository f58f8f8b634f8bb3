package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/store"
	bolt "go.etcd.io/bbolt"
)

// InspectReport describes a data directory, read offline.
type InspectReport struct {
	Dir    string        `json:"dir"`
	Queues []QueueReport `json:"queues"`
}

// QueueReport describes one queue on disk.
type QueueReport struct {
	Name      string          `json:"name"`
	Segments  []SegmentReport `json:"segments"`
	Bytes     int64           `json:"bytes"`    // file bytes of all segments
	Messages  uint64          `json:"messages"` // messages in readable segments
	Oldest    time.Time       `json:"oldest"`   // enqueue time of the oldest readable message; zero if none
	Targets   []TargetReport  `json:"targets"`
	Damaged   []Damage        `json:"damaged,omitempty"` // with verify: every record or structure that failed its check
	Verified  bool            `json:"verified"`
	LastSeq   uint64          `json:"last_seq"`
	FirstSeq  uint64          `json:"first_seq"`
	OpenError string          `json:"open_error,omitempty"` // cursors.db could not be read
	// Spares are deleted segments' logs kept for new heads to write over
	// (see takeSpare): disk the queue holds beyond Bytes.
	Spares     int   `json:"spares"`
	SpareBytes int64 `json:"spare_bytes"`
}

// SegmentReport describes one segment file.
type SegmentReport struct {
	File       string    `json:"file"`
	First      uint64    `json:"first"`
	Last       uint64    `json:"last"`       // First-1 when empty
	FileBytes  int64     `json:"file_bytes"` // bytes allocated on disk (bbolt files are sparse)
	LastAppend time.Time `json:"last_append"`
	Error      string    `json:"error,omitempty"` // the file could not be opened or read
}

// TargetReport is one consumer's position and its messages by phase
// (counted as the running server's counts are, see countOffline; nothing
// is in flight offline).
type TargetReport struct {
	Name    string `json:"name"`
	Floor   uint64 `json:"floor"`   // lowest seq not finished (as last persisted)
	Backlog uint64 `json:"backlog"` // messages at or above the floor (an upper bound: some may be finished)
	store.Counts
}

// Damage is one failed check.
type Damage struct {
	Segment string `json:"segment"` // the file that failed: a segment's .db, .log or .idx
	Seq     uint64 `json:"seq"`     // 0 when the damage is not tied to one record
	Err     string `json:"err"`
}

// Inspect reads the data directory dir without changing it. With verify it
// checks every record's checksum, every state record and bbolt's own page
// structure. It needs the files unlocked: stop the server first (bbolt's
// file locks make it give up after a second otherwise).
func Inspect(dir string, verify bool) (*InspectReport, error) {
	qdir := filepath.Join(dir, "queues")
	ents, err := os.ReadDir(qdir)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", dir, err)
	}
	rep := &InspectReport{Dir: dir}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		qr, err := inspectQueue(filepath.Join(qdir, e.Name()), e.Name(), verify)
		if err != nil {
			return nil, err
		}
		rep.Queues = append(rep.Queues, *qr)
	}
	return rep, nil
}

func openReadOnly(path string) (*bolt.DB, error) {
	db, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%s is locked: is sluice still running on this directory?", path)
	}
	return db, err
}

func inspectQueue(dir, name string, verify bool) (*QueueReport, error) {
	qr := &QueueReport{Name: name, Verified: verify}
	floors := map[string]uint64{}
	if db, err := openReadOnly(filepath.Join(dir, "cursors.db")); err != nil {
		if strings.Contains(err.Error(), "locked") {
			return nil, err
		}
		qr.OpenError = err.Error()
		qr.Damaged = append(qr.Damaged, Damage{Segment: "cursors.db", Err: "cannot open: " + err.Error()})
	} else {
		if verify {
			safeView(db, func(tx *bolt.Tx) error {
				for cerr := range tx.Check() {
					qr.Damaged = append(qr.Damaged, Damage{Segment: "cursors.db", Err: "bbolt check: " + cerr.Error()})
				}
				return nil
			})
			for _, seq := range badTombstones(db) {
				qr.Damaged = append(qr.Damaged, Damage{Segment: "cursors.db", Seq: seq,
					Err: "the tombstone of an expired message does not decode: it is not listed or counted, and the next retention pass deletes it"})
			}
		}
		safeView(db, func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketFloors); b != nil {
				b.ForEach(func(k, v []byte) error {
					if len(v) == 8 {
						floors[string(k)] = binary.BigEndian.Uint64(v)
					}
					return nil
				})
			}
			return nil
		})
		db.Close()
	}
	targets := map[string]*TargetReport{}
	for t, f := range floors {
		targets[t] = &TargetReport{Name: t, Floor: f}
	}
	firsts, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	oc := newOfflineCounts(dir, targets, qr)
	spareLogs, _ := spares(dir)
	for _, p := range spareLogs {
		qr.Spares++
		qr.SpareBytes += allocated(p)
	}
	for _, first := range firsts {
		sr := SegmentReport{File: segmentName(first), First: first, Last: first - 1}
		path := filepath.Join(dir, sr.File)
		for _, f := range segmentFiles(dir, first) {
			sr.FileBytes += allocated(f)
		}
		qr.Bytes += sr.FileBytes
		db, err := openReadOnly(path)
		if err != nil {
			if strings.Contains(err.Error(), "locked") {
				return nil, err
			}
			sr.Error = err.Error()
			qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Err: "cannot open: " + err.Error()})
			qr.Segments = append(qr.Segments, sr)
			continue
		}
		err = safeView(db, func(tx *bolt.Tx) error {
			return inspectSegment(tx, dir, &sr, qr, targets, verify)
		})
		if err == nil {
			err = safeView(db, func(tx *bolt.Tx) error {
				return oc.segment(tx, sr.First, sr.Last)
			})
		}
		if err == nil && verify {
			err = safeView(db, func(tx *bolt.Tx) error {
				for cerr := range tx.Check() {
					qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Err: "bbolt check: " + cerr.Error()})
				}
				return nil
			})
		}
		if err != nil {
			sr.Error = err.Error()
			qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Err: err.Error()})
		}
		db.Close()
		qr.Segments = append(qr.Segments, sr)
	}
	aside, _ := filepath.Glob(filepath.Join(dir, "seg-*.damaged"))
	for _, p := range aside {
		qr.Damaged = append(qr.Damaged, Damage{Segment: filepath.Base(p), Err: "moved aside at start-up as damaged"})
	}
	have := map[uint64]bool{}
	for _, f := range firsts {
		have[f] = true
	}
	marked, _ := filepath.Glob(filepath.Join(dir, "seg-*.deleting"))
	for _, first := range orphanLogs(dir, have) {
		if slices.Contains(marked, filepath.Join(dir, deletingName(first))) {
			continue // a deletion under way (or interrupted): start-up finishes it
		}
		qr.Damaged = append(qr.Damaged, Damage{Segment: logName(first),
			Err: "segment log without its state file: start-up rebuilds the state file from the log and delivers its messages again"})
	}
	// Seqs only grow and segments are deleted oldest first, so a hole
	// between two segments is damage (a segment lost or moved aside).
	var prevLast uint64
	for i, s := range qr.Segments {
		if s.Error == "" && s.Last >= s.First {
			if qr.FirstSeq == 0 {
				qr.FirstSeq = s.First
			}
			qr.LastSeq = s.Last
		}
		if i > 0 && s.First > prevLast+1 && qr.Segments[i-1].Error == "" {
			qr.Damaged = append(qr.Damaged, Damage{Segment: s.File,
				Err: fmt.Sprintf("seqs %d to %d are missing before this segment (a segment was lost or moved aside)", prevLast+1, s.First-1)})
		}
		prevLast = max(prevLast, s.Last)
	}
	for _, t := range targets {
		if t.Floor > prevLast+1 && len(qr.Segments) > 0 {
			qr.Damaged = append(qr.Damaged, Damage{Segment: "cursors.db",
				Err: fmt.Sprintf("target %q's floor %d is past the end of the log (last seq %d): the log's tail was lost; start-up starts new messages after the floor", t.Name, t.Floor, prevLast)})
		}
	}
	oc.finish()
	for _, t := range targets {
		if qr.LastSeq >= t.Floor {
			t.Backlog = qr.LastSeq - t.Floor + 1
		}
		qr.Targets = append(qr.Targets, *t)
	}
	sort.Slice(qr.Targets, func(i, j int) bool { return qr.Targets[i].Name < qr.Targets[j].Name })
	return qr, nil
}

func inspectSegment(tx *bolt.Tx, dir string, sr *SegmentReport, qr *QueueReport, targets map[string]*TargetReport, verify bool) error {
	info := tx.Bucket(bucketInfo)
	if info == nil {
		return fmt.Errorf("%w: no info bucket", ErrCorrupt)
	}
	if v := info.Get(keyLastAt); len(v) == 8 {
		sr.LastAppend = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
	}
	var sealed uint64
	v := info.Get(keySealed)
	if len(v) == 8 {
		sealed = binary.BigEndian.Uint64(v)
	}
	if verify && len(v) == 8 {
		verifyKeyFilter(tx, info, sr, qr)
	}
	lpath := filepath.Join(dir, logName(sr.First))
	var n, total uint64
	if len(v) == 8 && !verify {
		// Sealed: the count is recorded; read only the first record.
		n, total = sealed, sealed
		if n > 0 {
			f, err := os.Open(lpath)
			if err != nil {
				return fmt.Errorf("%w: log: %v", ErrCorrupt, err)
			}
			idx, err := openIndex(filepath.Join(dir, idxName(sr.First)), sealed)
			if err != nil {
				f.Close()
				return err
			}
			l := &segLog{f: f, idx: idx, n: n, first: sr.First, path: lpath}
			if rec, err := l.read(sr.First, nil); err == nil {
				if at, _, _ := recordHead(rec); qr.Oldest.IsZero() || at.Before(qr.Oldest) {
					qr.Oldest = at
				}
			}
			f.Close()
			idx.Close()
		}
	} else {
		var staleBelow uint64
		if v := info.Get(keyStaleBelow); len(v) == 8 {
			staleBelow = min(binary.BigEndian.Uint64(v), sr.First)
		}
		sc, err := scanLog(lpath, sr.First, staleBelow, false)
		if err != nil {
			return fmt.Errorf("%w: log: %v", ErrCorrupt, err)
		}
		n = uint64(len(sc.locs))
		total = n
		if n > 0 && (qr.Oldest.IsZero() || sc.oldestAt.Before(qr.Oldest)) {
			qr.Oldest = sc.oldestAt
		}
		if verify {
			for _, d := range sc.damaged {
				d.Segment = logName(sr.First)
				qr.Damaged = append(qr.Damaged, d)
			}
			if sc.tail > 0 {
				qr.Damaged = append(qr.Damaged, Damage{Segment: logName(sr.First), Seq: sr.First + n,
					Err: fmt.Sprintf("log: %d bytes after the last whole frame (a torn write, or damage)", sc.tail)})
			}
			if len(v) == 8 {
				if err := verifyIndex(dir, sr, sc.locs, sealed, qr); err != nil {
					return err
				}
			}
			if err := verifyRecords(lpath, sr, sc.locs, qr); err != nil {
				return err
			}
		}
		for _, l := range sc.locs {
			if l.off == missing {
				n-- // counted as damage, not as a message
			}
		}
	}
	sr.Last = sr.First + total - 1
	qr.Messages += n
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if t, ok := strings.CutPrefix(string(name), "b/"); ok {
			if verify {
				verifyBlocks(b, t, sr, qr)
			}
			return nil
		}
		t, ok := strings.CutPrefix(string(name), "s/")
		if !ok {
			return nil
		}
		tr := targets[t]
		if tr == nil {
			tr = &TargetReport{Name: t}
			targets[t] = tr
		}
		return b.ForEach(func(k, v []byte) error {
			st, err := decodeState(v)
			if err != nil {
				if verify {
					qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Seq: binary.BigEndian.Uint64(k), Err: "target " + t + ": " + err.Error()})
				}
				return nil
			}
			_ = st // counted by countOffline
			return nil
		})
	})
}

// verifyBlocks reports the damaged delivered blocks of target in b, and
// the damaged state records inside the others.
func verifyBlocks(b *bolt.Bucket, target string, sr *SegmentReport, qr *QueueReport) {
	b.ForEach(func(k, v []byte) error {
		first := binary.BigEndian.Uint64(k)
		var blk block
		if err := decodeBlock(v, &blk); err != nil {
			qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Seq: first,
				Err: fmt.Sprintf("target %s: delivered block of seqs %d-%d (read as not delivered): %v", target, first, first+blockSize-1, err)})
			return nil
		}
		for i, rec := range blk {
			if rec == nil {
				continue
			}
			if _, err := decodeState(rec); err != nil {
				qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Seq: first + uint64(i), Err: "target " + target + ": " + err.Error()})
			}
		}
		return nil
	})
}

// allocated returns the bytes a file occupies on disk.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return allocatedBytes(fi)
}

// verifyIndex checks a sealed segment's index against what its log holds.
func verifyIndex(dir string, sr *SegmentReport, locs []recLoc, sealed uint64, qr *QueueReport) error {
	if sealed != uint64(len(locs)) {
		qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File,
			Err: fmt.Sprintf("sealed with %d messages, the log holds %d", sealed, len(locs))})
	}
	idx, err := openIndex(filepath.Join(dir, idxName(sr.First)), sealed)
	if err != nil {
		qr.Damaged = append(qr.Damaged, Damage{Segment: idxName(sr.First), Err: "index: " + err.Error()})
		return nil
	}
	defer idx.Close()
	bad := 0
	err = eachIndexed(idx, func(i uint64, l recLoc) {
		if i < uint64(len(locs)) && locs[i] != l && bad < 10 {
			bad++
			qr.Damaged = append(qr.Damaged, Damage{Segment: idxName(sr.First), Seq: sr.First + i, Err: "index entry does not match the log"})
		}
	})
	if err != nil {
		qr.Damaged = append(qr.Damaged, Damage{Segment: idxName(sr.First), Err: "index: " + err.Error()})
	}
	return nil
}

// verifyRecords decodes every whole frame's record (its checksum held in
// the scan; this checks its format).
func verifyRecords(lpath string, sr *SegmentReport, locs []recLoc, qr *QueueReport) error {
	f, err := os.Open(lpath)
	if err != nil {
		return err
	}
	defer f.Close()
	l := &segLog{f: f, mem: newLocList(locs), n: uint64(len(locs)), first: sr.First, path: lpath}
	var buf []byte
	for i, loc := range locs {
		if loc.off == missing {
			continue
		}
		seq := sr.First + uint64(i)
		if buf, err = l.read(seq, buf[:0]); err == nil {
			_, err = DecodeRecord(buf)
		}
		if err != nil {
			qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Seq: seq, Err: err.Error()})
		}
	}
	return nil
}

// verifyKeyFilter checks a sealed segment's key filter: its encoding, and
// that it holds every key of the segment's "k" bucket (a filter that missed
// one would let a duplicate through). A segment sealed before filters has
// none, which is not damage.
func verifyKeyFilter(tx *bolt.Tx, info *bolt.Bucket, sr *SegmentReport, qr *QueueReport) {
	v := info.Get(keyKeyFilter)
	if v == nil {
		return
	}
	f, err := unmarshalKeyFilter(v)
	if err != nil {
		qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Err: err.Error() + " (its idempotency keys are looked up in the bbolt file instead)"})
		return
	}
	kb := tx.Bucket(bucketKeys)
	if kb == nil {
		return
	}
	missed := 0
	kb.ForEach(func(k, val []byte) error {
		if len(k) != 16 || f.mayContain([16]byte(k)) {
			return nil
		}
		if missed++; missed <= 10 { // as verifyIndex: the first few, then a count
			var seq uint64
			if len(val) >= 8 {
				seq = binary.BigEndian.Uint64(val)
			}
			qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Seq: seq, Err: "key filter misses the idempotency key of this message"})
		}
		return nil
	})
	if missed > 10 {
		qr.Damaged = append(qr.Damaged, Damage{Segment: sr.File, Err: fmt.Sprintf("key filter misses %d idempotency keys in all (the first 10 are listed)", missed)})
	}
}
