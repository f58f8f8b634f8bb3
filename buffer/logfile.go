package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"
)

// A segment's messages live in its log file, seg-<first>.log: a sequence of
// frames, appended by the writer with one write(2) per commit (and one
// fdatasync with SyncAlways), never rewritten.
//
//	frame: len u32 | seq u64 | crc32c(len, seq) u32 | record [len]
//
// The record (record.go) carries its own CRC-32C, so a frame is whole when
// its header checksum and its record checksum both hold. A crash can leave
// only a torn frame at the end (never acknowledged with SyncAlways: the
// acknowledgement follows the fdatasync); opening the head cuts it off.
//
// Where each seq's frame starts is kept in memory for the head segment
// (16 bytes a message, at most one segment's worth) and rebuilt at start by
// reading the head's log once: nothing about a message is written twice on
// the acknowledgement path. When the head rolls, it is sealed: the index is
// written to seg-<first>.idx (12 bytes a message, read with pread when
// needed, never held in memory), the idempotency keys go into the segment's
// bbolt file, and the message count is recorded there last, as the seal.
const frameHeader = 16

// idxEntry is the size of one seal index entry: frame offset u64 | record len u32.
const idxEntry = 12

// missing marks a seq with no readable frame (lost in a damaged region).
const missing = ^uint64(0)

type recLoc struct {
	off uint64 // of the frame; missing if none
	n   uint32 // record length
}

func appendFrame(dst []byte, seq uint64, rec []byte) []byte {
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(rec)))
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:start+12], castagnoli))
	return append(dst, rec...)
}

// parseFrameHeader checks a frame header and returns its record length and seq.
func parseFrameHeader(h []byte) (n uint32, seq uint64, ok bool) {
	if len(h) < frameHeader {
		return 0, 0, false
	}
	if crc32.Checksum(h[:12], castagnoli) != binary.BigEndian.Uint32(h[12:16]) {
		return 0, 0, false
	}
	n = binary.BigEndian.Uint32(h[:4])
	return n, binary.BigEndian.Uint64(h[4:12]), n <= MaxRecordBytes
}

// recordSound reports whether rec's trailing checksum holds.
func recordSound(rec []byte) bool { return store.RecordSound(rec) }

// segLog is a segment's log file and its index. The writer goroutine is the
// only one that appends; readers may call read concurrently.
type segLog struct {
	f     *os.File
	path  string
	first uint64

	mu  sync.RWMutex
	mem *locList // the head's index, by seq-first; nil once sealed
	idx *os.File // the seal index; nil while the head
	n   uint64   // messages indexed (seq first..first+n-1)

	staleBelow uint64 // recycled file: its old frames have seqs below this; 0 if not
	recycled   int64  // writer only: the recycled file's size, up to which writes are padded (see padWrite); 0 if none

	end  int64                  // writer only: where the next frame goes
	wb   int64                  // writer only, SyncNever: writeback started up to here
	keys map[[16]byte]keyTarget // writer only, head: idempotency keys of the head's messages
}

// keyTarget is what an idempotency key names: the message, and the
// fingerprint of its request (store.Fingerprint; zero: unknown) that a
// repeat must match (see idempotency.go).
type keyTarget struct {
	seq uint64
	tag [8]byte
	fp  [16]byte
}

func logName(first uint64) string { return fmt.Sprintf("seg-%016x.log", first) }
func idxName(first uint64) string { return fmt.Sprintf("seg-%016x.idx", first) }

// count is the number of messages the index covers.
func (l *segLog) count() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.n
}

// loc returns where seq's frame is. Caller holds l.mu (read).
func (l *segLog) locLocked(seq uint64) (recLoc, error) {
	if seq < l.first || seq-l.first >= l.n {
		return recLoc{off: missing}, ErrNotFound
	}
	i := seq - l.first
	if l.mem != nil {
		return l.mem.at(i), nil
	}
	var b [idxEntry]byte
	if _, err := l.idx.ReadAt(b[:], int64(i*idxEntry)); err != nil {
		return recLoc{off: missing}, fmt.Errorf("%w: index of %s: %v", ErrCorrupt, l.path, err)
	}
	return recLoc{off: binary.BigEndian.Uint64(b[:8]), n: binary.BigEndian.Uint32(b[8:])}, nil
}

// locsLocked returns where the frames of from..from+n-1 are (all in the
// log): from the head's index in memory, or with one pread of a sealed
// segment's index file. Caller holds l.mu (read).
func (l *segLog) locsLocked(from uint64, n int) ([]recLoc, error) {
	if from < l.first || from-l.first+uint64(n) > l.n {
		return nil, ErrNotFound
	}
	locs := make([]recLoc, n)
	if n == 0 {
		return locs, nil
	}
	i := from - l.first
	if l.mem != nil {
		l.mem.copyTo(locs, i)
		return locs, nil
	}
	b := make([]byte, n*idxEntry)
	if _, err := l.idx.ReadAt(b, int64(i*idxEntry)); err != nil {
		return nil, fmt.Errorf("%w: index of %s: %v", ErrCorrupt, l.path, err)
	}
	for k := range locs {
		locs[k] = recLoc{off: binary.BigEndian.Uint64(b[k*idxEntry:]), n: binary.BigEndian.Uint32(b[k*idxEntry+8:])}
	}
	return locs, nil
}

// read appends seq's record to buf and returns it. ErrNotFound: seq is not
// in this log; ErrCorrupt: its frame is damaged; ErrClosed: the segment was
// closed (or deleted) under the reader.
func (l *segLog) read(seq uint64, buf []byte) ([]byte, error) {
	l.mu.RLock()
	loc, err := l.locLocked(seq)
	l.mu.RUnlock()
	if err != nil {
		return buf, err
	}
	if loc.off == missing {
		return buf, fmt.Errorf("%w: seq %d was in a damaged region of %s", ErrCorrupt, seq, l.path)
	}
	start := len(buf)
	need := frameHeader + int(loc.n)
	buf = append(buf, make([]byte, need)...)
	if _, err := l.f.ReadAt(buf[start:], int64(loc.off)); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return buf[:start], fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return buf[:start], fmt.Errorf("%w: seq %d at offset %d of %s: %v", ErrCorrupt, seq, loc.off, l.path, err)
	}
	n, fseq, ok := parseFrameHeader(buf[start:])
	if !ok || fseq != seq || n != loc.n {
		return buf[:start], fmt.Errorf("%w: frame of seq %d at offset %d of %s does not match its index", ErrCorrupt, seq, loc.off, l.path)
	}
	copy(buf[start:], buf[start+frameHeader:])
	return buf[:start+int(n)], nil
}

// readSpan reads the frames of from..from+n-1 (those the log has) with one
// pread into buf and returns buf and their records, each aliasing buf;
// recs[i] is nil where that frame is damaged or does not match its index
// (read it with read to get the error). ErrClosed: the segment was closed
// under the reader.
func (l *segLog) readSpan(from uint64, n int, buf []byte) ([]byte, [][]byte, error) {
	l.mu.RLock()
	n = int(min(uint64(n), l.first+l.n-min(from, l.first+l.n)))
	locs, err := l.locsLocked(from, n)
	l.mu.RUnlock()
	if err != nil {
		return buf, nil, err
	}
	recs := make([][]byte, n)
	if n == 0 {
		return buf, recs, nil
	}
	// The span from the first whole frame to the end of the last.
	lo, hi := uint64(missing), uint64(0)
	for _, loc := range locs {
		if loc.off != missing {
			lo = min(lo, loc.off)
			hi = max(hi, loc.off+frameHeader+uint64(loc.n))
		}
	}
	if lo == missing || hi-lo > 64<<20 {
		return buf, recs, nil // nothing whole, or too far apart: one by one
	}
	if uint64(cap(buf)) >= hi-lo {
		buf = buf[:hi-lo]
	} else {
		buf = make([]byte, hi-lo)
	}
	if _, err := l.f.ReadAt(buf, int64(lo)); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return buf, nil, fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return buf, recs, nil // read them one by one, with the error each gets
	}
	for i, loc := range locs {
		if loc.off == missing {
			continue
		}
		f := buf[loc.off-lo : loc.off-lo+frameHeader+uint64(loc.n)]
		if fn, fseq, ok := parseFrameHeader(f); ok && fseq == from+uint64(i) && fn == loc.n {
			recs[i] = f[frameHeader:]
		}
	}
	return buf, recs, nil
}

// pageSize is the unit of the page cache that padWrite rounds writes to.
const pageSize = 4096

var zeroPage [pageSize]byte

// padWrite returns buf, the frames of one commit to be written at l.end,
// with zeros after them up to the next page boundary when the head writes
// over a recycled file: a write that ends inside a page the page cache no
// longer holds (a spare that has been on disk for days) makes the kernel
// read that page first, inside write(2), which made commits on such a
// spare slower than on a new file (BenchmarkAppendOnSpares, spare-cold).
// The next commit writes over the zeros; a scan reads them as the end of
// the log (no frame of its own starts there). Nothing is padded past the
// file's size, where no page needs reading.
func (l *segLog) padWrite(buf []byte) []byte {
	if l.recycled == 0 {
		return buf
	}
	end := l.end + int64(len(buf))
	pad := (pageSize - end%pageSize) % pageSize
	if pad == 0 || end+pad > l.recycled {
		return buf
	}
	return append(buf, zeroPage[:pad]...)
}

// appendLocs records frames the writer has written and synced.
func (l *segLog) appendLocs(locs []recLoc) {
	l.mu.Lock()
	l.mem.append(locs)
	l.n += uint64(len(locs))
	l.mu.Unlock()
}

// locList is the head's index: where each frame starts, in blocks of
// locBlock entries, so that growing it never copies what it holds (a slice
// grown by append copied it ~4 times over, and allocated and cleared each
// new array: ~4% of the CPU of bench/logs' split ingest).
type locList struct {
	blocks [][]recLoc // each of capacity locBlock, full but the last
	n      uint64
}

const (
	locBlockBits = 12
	locBlock     = 1 << locBlockBits
)

// newLocList returns a list of a copy of locs.
func newLocList(locs []recLoc) *locList {
	l := &locList{}
	l.append(locs)
	return l
}

func (l *locList) at(i uint64) recLoc { return l.blocks[i>>locBlockBits][i&(locBlock-1)] }

// copyTo copies the entries from from on into dst (all of them there).
func (l *locList) copyTo(dst []recLoc, from uint64) {
	for len(dst) > 0 {
		b := l.blocks[from>>locBlockBits][from&(locBlock-1):]
		k := copy(dst, b)
		dst, from = dst[k:], from+uint64(k)
	}
}

func (l *locList) append(locs []recLoc) {
	for len(locs) > 0 {
		if l.n&(locBlock-1) == 0 {
			l.blocks = append(l.blocks, make([]recLoc, 0, locBlock))
		}
		b := &l.blocks[len(l.blocks)-1]
		k := min(len(locs), locBlock-len(*b))
		*b = append(*b, locs[:k]...)
		locs, l.n = locs[k:], l.n+uint64(k)
	}
}

// scanned is what reading a log from its start found.
type scanned struct {
	locs     []recLoc
	end      int64     // just past the last whole frame
	lastAt   time.Time // enqueue time of the last message
	oldestAt time.Time // enqueue time of the first message
	keys     map[[16]byte]keyTarget
	damaged  []Damage // regions skipped (Seq: the first seq missing)
	tail     int64    // bytes after the last whole frame, up to stale (a torn write, or damage)
	stale    int64    // bytes at the end that a recycled file held before (frames of seqs below its bound)
}

// scanLog reads the log at path from its start. Frames must carry the seqs
// first, first+1, ... A frame that fails its checks is skipped by searching
// for the next whole frame with a higher seq; the seqs in between are
// marked missing and reported. With keys it also collects idempotency keys.
//
// staleBelow > 0 says the file was recycled (see takeSpare) and that what
// it held before are frames of seqs below staleBelow (<= first): the log
// ends at the first such frame where a frame of its own would start, and
// the rest is counted as stale, not as damage. Past damage, the search for
// the next frame steps over stale frames, so that a damaged frame of the
// log's own cannot cut off the frames after it.
func scanLog(path string, first, staleBelow uint64, keys bool) (*scanned, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sc := &scanned{}
	if keys {
		sc.keys = map[[16]byte]keyTarget{}
	}
	size := fi.Size()
	if size == 0 {
		return sc, nil
	}
	data, unmap, err := mapFile(f, size)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	defer unmap()
	name := path
	next := first
	off := int64(0)
	// whole says whether a frame at at is whole and may follow what was
	// read: a seq from next on, or a stale one.
	whole := func(at int64) (uint32, uint64, bool) {
		n, seq, ok := parseFrameHeader(data[at:])
		if !ok || at+frameHeader+int64(n) > size || (seq < next && seq >= staleBelow) {
			return 0, 0, false
		}
		return n, seq, recordSound(data[at+frameHeader : at+frameHeader+int64(n)])
	}
	for off+frameHeader <= size {
		n, seq, ok := whole(off)
		if ok && seq < staleBelow {
			sc.stale = size - off
			break // a recycled file's old content
		}
		if !ok {
			// Damage, or the torn tail a crash leaves: find the next whole
			// frame of this log after it, if any.
			found, staleAt := int64(-1), int64(-1)
			for at := off + 1; at+frameHeader <= size; at++ {
				n, seq, ok := whole(at)
				if !ok {
					continue
				}
				if seq >= staleBelow {
					found = at
					break
				}
				if staleAt < 0 {
					staleAt = at
				}
				at += frameHeader + int64(n) - 1
			}
			if found < 0 {
				// The tail: sc.end stays at the last whole frame. In a
				// recycled file, bytes that do not start a frame of this
				// log's own are the rest of an old frame (the new end falls
				// inside one), all stale; a header of its own whose frame
				// fails is a torn write or damage, reported as the tail.
				if staleAt >= 0 {
					if _, seq, ok := parseFrameHeader(data[off:]); ok && seq >= next {
						sc.stale = size - staleAt
					} else {
						sc.stale = size - off
					}
				}
				break
			}
			_, seq, _ = whole(found)
			sc.damaged = append(sc.damaged, Damage{Segment: name, Seq: next,
				Err: fmt.Sprintf("log damaged at offset %d: seqs %d..%d unreadable", off, next, seq-1)})
			off = found
			continue
		}
		for ; next < seq; next++ {
			sc.locs = append(sc.locs, recLoc{off: missing})
		}
		rec := data[off+frameHeader : off+frameHeader+int64(n)]
		at, tag, key := recordHead(rec)
		if len(sc.locs) == 0 {
			sc.oldestAt = at
		}
		sc.lastAt = at
		if keys && len(key) > 0 {
			fp, _ := store.RecordFingerprint(rec) // a sound record parses; else zero: unknown
			sc.keys[keyHash(key)] = keyTarget{seq: seq, tag: tag, fp: fp}
		}
		sc.locs = append(sc.locs, recLoc{off: uint64(off), n: n})
		next = seq + 1
		off += frameHeader + int64(n)
		sc.end = off
	}
	sc.tail = size - sc.end - sc.stale
	return sc, nil
}

func recordHead(rec []byte) (time.Time, [8]byte, []byte) { return store.RecordHead(rec) }

// writeIndex writes the entries of blocks, one after another, to path as
// a seal index and fsyncs it.
func writeIndex(path string, blocks ...[]recLoc) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 0, 64<<10)
write:
	for _, locs := range blocks {
		for _, l := range locs {
			buf = binary.BigEndian.AppendUint64(buf, l.off)
			buf = binary.BigEndian.AppendUint32(buf, l.n)
			if len(buf) >= 64<<10-idxEntry {
				if _, err = f.Write(buf); err != nil {
					break write
				}
				buf = buf[:0]
			}
		}
	}
	if err == nil {
		_, err = f.Write(buf)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// readIndex opens a seal index and checks that it holds n entries.
func openIndex(path string, n uint64) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && uint64(fi.Size()) != n*idxEntry {
		err = fmt.Errorf("%w: index %s holds %d bytes, want %d", ErrCorrupt, path, fi.Size(), n*idxEntry)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// eachIndexed calls fn for every entry of a seal index file, in seq order.
func eachIndexed(f *os.File, fn func(i uint64, l recLoc)) error {
	buf := make([]byte, 64<<10/idxEntry*idxEntry)
	var i uint64
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		n -= n % idxEntry
		for p := 0; p < n; p += idxEntry {
			fn(i, recLoc{off: binary.BigEndian.Uint64(buf[p:]), n: binary.BigEndian.Uint32(buf[p+8:])})
			i++
		}
		off += int64(n)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
