package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// openBolt opens a bbolt file, first checking that the file is as long as
// its meta page says (a truncated file would fault when mapped), and turning
// a panic or fault inside Open into an error wrapping ErrCorrupt.
func openBolt(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	if err := checkLength(path); err != nil {
		return nil, err
	}
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("%w: open %s: %v", ErrCorrupt, path, p)
		}
	}()
	return bolt.Open(path, 0o600, opts)
}

// checkLength reads bbolt's two meta pages and fails if the newest valid
// one describes more pages than the file holds. A new or empty file passes.
func checkLength(path string) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	// Meta layout (bbolt internal/common/meta.go), after a 16-byte page header:
	// magic u32, version u32, pageSize u32, flags u32, root {pgid u64, seq u64},
	// freelist u64, pgid u64, txid u64, checksum u64 (FNV-64a of the fields before it).
	var best struct {
		ok        bool
		txid, hwm uint64
		pageSize  uint32
	}
	buf := make([]byte, 16+64)
	// Meta page 0 is at offset 0; meta page 1 at one page size, which the
	// damaged page 0 may no longer tell: try every size bbolt can use
	// (1 KiB to 64 KiB), and believe a meta page only where it says its
	// page size is its offset.
	offs := []int64{0}
	for ps := int64(1 << 10); ps <= 1<<16; ps <<= 1 {
		offs = append(offs, ps)
	}
	for _, off := range offs {
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			continue
		}
		m := buf[16:]
		if binary.LittleEndian.Uint32(m[0:]) != 0xED0CDAED {
			continue
		}
		h := fnv.New64a()
		h.Write(m[:56])
		if h.Sum64() != binary.LittleEndian.Uint64(m[56:]) {
			continue
		}
		pageSize := binary.LittleEndian.Uint32(m[8:])
		if off != 0 && int64(pageSize) != off {
			continue
		}
		txid := binary.LittleEndian.Uint64(m[48:])
		if !best.ok || txid > best.txid {
			best.ok, best.txid = true, txid
			best.hwm = binary.LittleEndian.Uint64(m[40:])
			best.pageSize = pageSize
		}
	}
	if !best.ok {
		return fmt.Errorf("%w: %s: no valid meta page", ErrCorrupt, path)
	}
	if need := int64(best.hwm) * int64(best.pageSize); fi.Size() < need {
		return fmt.Errorf("%w: %s is truncated: %d bytes, its meta page needs %d", ErrCorrupt, path, fi.Size(), need)
	}
	return nil
}

// safeView runs fn in a read transaction of db and turns a panic or a
// memory fault inside it (bbolt reading a damaged page through its mmap)
// into an error wrapping ErrCorrupt, so one damaged segment cannot take the
// process down or stop the healthy ones.
func safeView(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: segment read failed: %v", ErrCorrupt, p)
		}
	}()
	return db.View(fn)
}

// safeUpdate is safeView for a write transaction; a recovered panic rolls
// the transaction back and is reported as ErrIO.
func safeUpdate(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: segment write failed: %v", ErrIO, p)
		}
	}()
	if err = db.Update(fn); err == nil {
		if h := afterUpdateHook.Load(); h != nil {
			(*h)()
		}
	}
	return err
}

// afterUpdateHook, set only by tests, runs after each successful safeUpdate,
// on the writer goroutine, before the writer updates its in-memory view of
// that commit (retry counts, the in-flight set): a test can act in that window.
var afterUpdateHook atomic.Pointer[func()]
