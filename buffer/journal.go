package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The outcome journal. A message's first outcome for a target, when it is
// Delivered (the common case: no retry entry to remove, no dead-letter
// index to update), is not written into the segment's bbolt file by the
// commit that makes it durable. It is appended, with the queue's group
// commit, to the journal, DIR/queues/<queue>/outcomes-<gen:016x>.log: one
// write(2) for every outcome of the commit and, with SyncAlways, an
// fdatasync shared with the commit's appends or at most outcomeSyncMax
// later, where a bbolt transaction costs two fsyncs and a page rewrite
// per touched segment. Until it reaches bbolt the outcome is also kept in
// memory (Queue.pending), where Lookup and the retention count read it.
//
// A checkpoint (every second, at 64Ki pending outcomes, before retention
// deletes a segment, and at Close) writes the pending outcomes into their
// segments' bbolt files, packed by blocks of 64 seqs (blocks.go), in one
// transaction per segment without fsync,
// fsyncs each file once, then starts a new journal and deletes the old
// one. At start-up every journal left is applied the same way before
// anything is read (a crash between the bbolt fsync and the deletion only
// applies it twice). A journal record never overwrites a state record:
// it is a first outcome, so a record already there was written later, by a
// change that went to bbolt directly (a replay, a purge).
//
// Frame: len u32 | CRC-32C(payload) u32 | payload; payload: gen u64 |
// seq u64 | len(target) u8 | target | state record (encodeState). A torn
// or damaged frame ends the journal: what follows it was never
// acknowledged to a drainer (the write failed or the process died inside
// it), so those messages are still in flight and are attempted again.
//
// A checkpoint renames the old journal to the new generation's name and
// writes over it, as spare logs are (see takeSpare): an fdatasync of blocks
// a file already has flushes the data alone, where one that grows the file
// also commits its new size and blocks, about twice the cost. Its old
// frames carry the old generation, so reading stops at the first of them.
// A queue's first journal is filled with zeros up front, for the same
// reason.

const (
	journalHeader = 8
	// checkpointAt is how many pending outcomes trigger a checkpoint
	// before the next tick: it bounds the memory they take (65-70
	// bytes each, BenchmarkPendingOutcomeMemory) and the work of one checkpoint.
	checkpointAt = 64 << 10
	// journalPrefill is what a new journal is zero-filled to: about a
	// second of outcomes at full speed.
	journalPrefill = 4 << 20
)

func journalName(gen uint64) string { return fmt.Sprintf("outcomes-%016x.log", gen) }

// journal is the open outcome journal. Writer only.
type journal struct {
	dir      string
	gen      uint64
	f        *os.File
	end      int64     // bytes written
	sync     int64     // bytes fdatasynced
	lastSync time.Time // when sync last moved (SyncAlways)
	buf      []byte    // frames of the commit being written (frameBuf)
}

// journalBufKeep is the largest frame buffer the journal keeps between
// commits; a larger one, from a commit of many outcomes, is let go.
const journalBufKeep = 256 << 10

// frameBuf returns an empty buffer of capacity n or more for one commit's
// frames, the journal's own when it is large enough and not too large to
// keep. The caller is done with it when writeOutcomes returns.
func (j *journal) frameBuf(n int) []byte {
	if cap(j.buf) < n {
		j.buf = make([]byte, 0, n)
		if n > journalBufKeep {
			b := j.buf
			j.buf = nil
			return b
		}
	}
	return j.buf[:0]
}

// outcomeSyncMax is how long, with SyncAlways, a written outcome may wait
// for its fdatasync: a commit of outcomes alone fsyncs the journal only
// when the last fsync is older than this; else the writer does it when
// this much time has passed (or sooner, with the next commit that has
// appends, the next floor save, a checkpoint or Close). Written, an
// outcome survives the death of the process; only a power loss can take
// the last outcomeSyncMax of them, and their messages are then delivered
// again (duplicates, never a loss). It spares the disk an fdatasync per
// commit of outcomes, and the drainer the wait for it.
const outcomeSyncMax = 10 * time.Millisecond

// pendKey names one pending outcome.
type pendKey struct {
	target int
	seq    uint64
}

// appendJournalFrame appends one outcome's frame of generation gen to buf,
// and returns it with the offset of the state record in it.
func appendJournalFrame(buf []byte, gen, seq uint64, target string, state *State) ([]byte, int) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0, 0, 0, 0, 0)
	p := len(buf)
	buf = binary.BigEndian.AppendUint64(buf, gen)
	buf = binary.BigEndian.AppendUint64(buf, seq)
	buf = append(buf, byte(len(target)))
	buf = append(buf, target...)
	st := len(buf)
	buf = appendState(buf, state)
	binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-p))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[p:], castagnoli))
	return buf, st
}

// journalRecord is one outcome read back from a journal.
type journalRecord struct {
	seq    uint64
	target string
	state  []byte
}

// readJournal returns the whole frames of generation gen in the journal at
// path, in order, and the offset where they end.
func readJournal(path string, gen uint64) ([]journalRecord, int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	recs, end := parseJournal(data, gen)
	return recs, end, nil
}

// parseJournal reads frames of generation gen from data until the first
// that is torn, damaged, or of another generation.
func parseJournal(data []byte, gen uint64) ([]journalRecord, int64) {
	var out []journalRecord
	off := 0
	for off+journalHeader <= len(data) {
		n := int(binary.BigEndian.Uint32(data[off:]))
		if n < 17 || off+journalHeader+n > len(data) {
			break
		}
		p := data[off+journalHeader : off+journalHeader+n]
		if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(data[off+4:]) {
			break
		}
		if binary.BigEndian.Uint64(p) != gen {
			break // a recycled file's old content
		}
		tl := int(p[16])
		if 17+tl > len(p) {
			break
		}
		out = append(out, journalRecord{seq: binary.BigEndian.Uint64(p[8:]), target: string(p[17 : 17+tl]), state: p[17+tl:]})
		off += journalHeader + n
	}
	return out, int64(off)
}

// journals returns the generations of dir's journals, oldest first.
func journals(dir string) []uint64 {
	paths, _ := filepath.Glob(filepath.Join(dir, "outcomes-*.log"))
	var gens []uint64
	for _, p := range paths {
		var g uint64
		if _, err := fmt.Sscanf(filepath.Base(p), "outcomes-%016x.log", &g); err == nil && filepath.Base(p) == journalName(g) {
			gens = append(gens, g)
		}
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i] < gens[j] })
	return gens
}

// replayJournals applies every journal in the queue's directory to the
// segments' bbolt files (record absent only), fsyncs them, removes the
// journals and opens a new, empty one. Called by load, before the writer
// starts and before anything reads a state.
func (q *Queue) replayJournals() error {
	gens := journals(q.dir)
	// Oldest journal first, in order: the first outcome of a seq counts
	// (a crash between a checkpoint's fsync and the journal's deletion
	// leaves it twice). A target no longer in the policy has no state
	// buckets: its outcomes are dropped.
	set := newPendingSet()
	var applied, dropped int
	for _, g := range gens {
		recs, _, err := readJournal(filepath.Join(q.dir, journalName(g)), g)
		if err != nil {
			return fmt.Errorf("read outcome journal %s: %w", journalName(g), err)
		}
		for _, r := range recs {
			t := slices.Index(q.targets, r.target)
			if s := q.segmentFor(r.seq); s != nil && t >= 0 {
				set.add(s, t, r.seq, r.state)
				applied++
			} else {
				dropped++ // its segment was deleted since, or its target
			}
		}
	}
	for _, ps := range set.segments() {
		if err := q.applyOutcomes(ps.seg, ps.byTarget); err != nil {
			return fmt.Errorf("apply outcome journal to %s: %w", segLabel(ps.seg.first), err)
		}
	}
	if len(gens) > 0 && applied+dropped > 0 {
		q.log.Info("applied the outcome journal left by the last run", "outcomes", applied, "of_deleted_segments_or_targets", dropped)
	}
	if len(gens) == 0 {
		return q.openJournal(1, "")
	}
	// Everything is applied: the newest journal is written over by the
	// next generation, the others go.
	for _, g := range gens[:len(gens)-1] {
		if err := os.Remove(filepath.Join(q.dir, journalName(g))); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	last := gens[len(gens)-1]
	return q.openJournal(last+1, filepath.Join(q.dir, journalName(last)))
}

// openJournal makes the journal of generation gen current: the file at
// recycle renamed (its frames are all of older generations), or a new
// file filled with zeros.
func (q *Queue) openJournal(gen uint64, recycle string) error {
	path := filepath.Join(q.dir, journalName(gen))
	var f *os.File
	var err error
	if recycle != "" {
		if err = os.Rename(recycle, path); err == nil {
			f, err = os.OpenFile(path, os.O_RDWR, 0)
		}
	} else {
		f, err = os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
		if err == nil {
			if _, err = f.WriteAt(make([]byte, journalPrefill), 0); err == nil {
				err = fdatasync(f)
			}
			if err != nil {
				// A full disk: an empty journal works, only slower.
				q.log.Warn("cannot zero-fill a new outcome journal", "err", err)
				err = f.Truncate(0)
			}
		}
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return fmt.Errorf("open outcome journal: %w", err)
	}
	syncDir(q.dir)
	q.jrn = &journal{dir: q.dir, gen: gen, f: f}
	return nil
}

// applyOutcomes writes the pending blocks of one segment (by target
// index) into s's bbolt file (blocks.go), each outcome only where the
// target has no state record yet, in one transaction without fsync, then
// fsyncs the file once. Writer only (or load).
func (q *Queue) applyOutcomes(s *segment, byTarget map[int][]pendBlock) error {
	noSync := s.db.NoSync
	s.db.NoSync = true
	err := safeUpdate(s.db, func(tx *bolt.Tx) error {
		for t, blks := range byTarget {
			if err := putBlocks(tx, q.targets[t], blks); err != nil {
				return err
			}
		}
		return nil
	})
	s.db.NoSync = noSync
	if err == nil {
		err = s.db.Sync()
	}
	return err
}

// writeOutcomes appends the frames of one commit's outcomes to the journal
// and, with SyncAlways, when the commit has appends (whose log is fsynced
// anyway) or the journal's last fsync is older than outcomeSyncMax,
// starts its fdatasync in another goroutine, so that it overlaps the
// log's in the same commit; the commit waits for it with the function
// returned. A failed write or sync is cut off again, so that no frame of
// an outcome reported as failed can be applied at a restart after a later
// frame was written over its torn end.
func (q *Queue) writeOutcomes(frames []byte, appends bool) (wait func() error) {
	j := q.jrn
	if _, err := j.f.WriteAt(frames, j.end); err != nil {
		j.f.Truncate(j.end)
		return func() error { return err }
	}
	end := j.end + int64(len(frames))
	now := time.Now()
	if q.cfg.Sync != SyncAlways || (!appends && now.Sub(j.lastSync) < outcomeSyncMax) {
		j.end = end // SyncAlways: the writer fsyncs it within outcomeSyncMax (journalSyncDue)
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() { done <- q.fsync(j.f) }()
	return func() error {
		if err := <-done; err != nil {
			j.f.Truncate(j.end)
			return err
		}
		j.end, j.sync, j.lastSync = end, end, time.Now()
		return nil
	}
}

// journalSyncDue reports whether the journal has outcomes written and not
// yet fsynced (SyncAlways: the writer fsyncs them within outcomeSyncMax).
func (q *Queue) journalSyncDue() bool {
	return q.cfg.Sync == SyncAlways && q.jrn != nil && q.jrn.end != q.jrn.sync
}

// syncJournal fdatasyncs what the journal got since the last sync
// (outcomeSyncMax after a write with SyncAlways, SyncInterval, before a
// floor is saved, Close). If it fails, the outcomes, which were reported
// recorded, are still pending in memory: a checkpoint writes them into
// the segments' bbolt files with their own fsync.
func (q *Queue) syncJournal() {
	j := q.jrn
	if j == nil || j.end == j.sync {
		return
	}
	if err := q.fsync(j.f); err != nil {
		q.log.Error("fsync of the outcome journal failed; checkpointing its outcomes instead", "file", journalName(j.gen), "err", err)
		q.checkpoint()
		return
	}
	j.sync, j.lastSync = j.end, time.Now()
}

// checkpoint writes every pending outcome into its segment's bbolt file,
// then starts a new journal and deletes the old one. Writer only. On
// failure the outcomes stay pending and in the journal, and the next
// checkpoint tries again.
func (q *Queue) checkpoint() {
	if q.pending.n == 0 {
		return
	}
	for _, ps := range q.pending.segments() {
		if err := q.applyOutcomes(ps.seg, ps.byTarget); err != nil {
			q.ckptFails.failed(q.log, "checkpoint of delivered outcomes failed; they stay in the journal", err, q.pending.inSegment(ps.seg))
			return
		}
	}
	q.ckptFails.recovered(q.log, "checkpoints of delivered outcomes succeed again")
	old := q.jrn
	old.f.Close()
	if err := q.openJournal(old.gen+1, filepath.Join(q.dir, journalName(old.gen))); err != nil {
		// The old journal is applied; a new, empty one will do.
		if err = q.openJournal(old.gen+1, ""); err != nil {
			q.ckptFails.failed(q.log, "checkpoint: cannot start a new outcome journal", err, 0)
			f, ferr := os.OpenFile(filepath.Join(q.dir, journalName(old.gen)), os.O_RDWR, 0)
			if ferr == nil {
				old.f = f
			}
			q.jrn = old
			return
		}
		os.Remove(filepath.Join(q.dir, journalName(old.gen)))
	}
	q.mu.Lock()
	q.pending = newPendingSet()
	q.mu.Unlock()
	q.checkpoints.Add(1)
}

// pendingState returns the outcome of seq for target index t that is in the
// journal but not yet in bbolt, or nil. Caller holds q.mu.
func (q *Queue) pendingState(s *segment, t int, seq uint64) []byte {
	return q.pending.get(s, t, seq)
}

// fsync fdatasyncs f and tells Config.ObserveSync how long it took.
func (q *Queue) fsync(f *os.File) error {
	if q.cfg.ObserveSync == nil {
		return fdatasync(f)
	}
	t := time.Now()
	err := fdatasync(f)
	q.cfg.ObserveSync(time.Since(t))
	return err
}
