package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"

	bolt "go.etcd.io/bbolt"
)

// Delivered blocks: how a checkpoint stores first outcomes.
//
// A checkpoint moves the outcome journal's outcomes (a message's first
// outcome, Delivered) into the segments' bbolt files. One bbolt put per
// outcome cost about as much CPU as the rest of recording it, so they are
// packed instead: bucket "b/<target>" holds one value per block of
// blockSize consecutive seqs,
//
//	key: seqKey(first seq of the block)
//	value: CRC-32C of the rest u32 | blockV1 | bitmap u64 (bit i: seq
//	       first+i has an entry) | for each bit set, lowest first:
//	       uvarint length | state record (appendState: crc32c | binary)
//
// A block is written whole by the writer; a checkpoint that brings more of
// its seqs rewrites it with them added.
//
// The per-seq bucket "s/<target>" comes first: a seq with a record there
// has the state that record holds, whatever a block says. Retries, dead
// letters, parking, replays and purges write there; blocks only ever hold
// first outcomes, which anything written to "s/" happened after. A
// checkpoint adds no entry for a seq that has a record in "s/".
//
// A block whose checksum or form is wrong is treated as holding nothing,
// as a damaged per-seq record is: its messages read as not finished, so
// those at or above the target's floor are delivered again after a
// restart (a duplicate, never a loss), and listings show them queued;
// Inspect with verify reports it. Data directories
// from before blocks have none and read as before; a version from before
// them reading a directory that has blocks would deliver the messages
// they hold again.
const (
	blockSize = 64
	blockV1   = 0x01
	// blockHeader: CRC, version, bitmap.
	blockHeader = 4 + 1 + 8
)

func blockBucket(target string) []byte { return []byte("b/" + target) }

// blockFirst is the first seq of seq's block.
func blockFirst(seq uint64) uint64 { return seq &^ (blockSize - 1) }

// block is a decoded delivered block: the state records of its seqs, nil
// where it has none. The records alias the value they were decoded from.
type block [blockSize][]byte

// decodeBlock decodes a block value into b.
func decodeBlock(v []byte, b *block) error {
	*b = block{}
	if len(v) < blockHeader {
		return fmt.Errorf("%w: delivered block of %d bytes", ErrCorrupt, len(v))
	}
	if crc32.Checksum(v[4:], castagnoli) != binary.BigEndian.Uint32(v) {
		return fmt.Errorf("%w: delivered block checksum mismatch", ErrCorrupt)
	}
	if v[4] != blockV1 {
		return fmt.Errorf("%w: delivered block version %#x", ErrCorrupt, v[4])
	}
	set := binary.BigEndian.Uint64(v[5:])
	p := v[blockHeader:]
	for set != 0 {
		i := bits.TrailingZeros64(set)
		set &^= 1 << i
		n, w := binary.Uvarint(p)
		if w <= 0 || n > uint64(len(p)-w) {
			*b = block{}
			return fmt.Errorf("%w: delivered block entry %d cut short", ErrCorrupt, i)
		}
		b[i] = p[w : w+int(n) : w+int(n)]
		p = p[w+int(n):]
	}
	if len(p) != 0 {
		*b = block{}
		return fmt.Errorf("%w: delivered block has %d trailing bytes", ErrCorrupt, len(p))
	}
	return nil
}

// appendBlock appends the value of b to dst.
func appendBlock(dst []byte, b *block) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, blockV1, 0, 0, 0, 0, 0, 0, 0, 0)
	var set uint64
	for i, r := range b {
		if r != nil {
			set |= 1 << i
			dst = binary.AppendUvarint(dst, uint64(len(r)))
			dst = append(dst, r...)
		}
	}
	binary.BigEndian.PutUint64(dst[start+5:], set)
	binary.BigEndian.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], castagnoli))
	return dst
}

// storedState returns the state record of seq for target in tx: the
// per-seq record if there is one, else the entry of its delivered block,
// else nil. Like bolt's Get, it is valid until tx ends.
func storedState(tx *bolt.Tx, target string, seq uint64) []byte {
	return newStateReader(tx, target).get(seq)
}

// stateReader reads one target's states in a transaction, seq by seq:
// the per-seq record first, else the delivered block's entry (decoding each
// block once while seqs go up).
type stateReader struct {
	s      *bolt.Bucket // "s/<target>"; nil: none
	blocks *blockReader
}

func newStateReader(tx *bolt.Tx, target string) *stateReader {
	return &stateReader{s: tx.Bucket(stateBucket(target)), blocks: newBlockReader(tx, target)}
}

// get returns seq's state record, or nil.
func (r *stateReader) get(seq uint64) []byte {
	if r.s != nil {
		if v := r.s.Get(seqKey(seq)); v != nil {
			return v
		}
	}
	return r.blocks.get(seq)
}

// blockReader reads the delivered entries of one target along ascending
// seqs, decoding each block once.
type blockReader struct {
	b     *bolt.Bucket // nil: the target has no blocks
	first uint64       // the block in blk; valid if loaded
	ok    bool
	blk   block
}

func newBlockReader(tx *bolt.Tx, target string) *blockReader {
	return &blockReader{b: tx.Bucket(blockBucket(target))}
}

// get returns seq's entry, or nil.
func (r *blockReader) get(seq uint64) []byte {
	if r.b == nil {
		return nil
	}
	f := blockFirst(seq)
	if !r.ok || r.first != f {
		r.first, r.ok = f, true
		if v := r.b.Get(seqKey(f)); v == nil || decodeBlock(v, &r.blk) != nil {
			r.blk = block{}
		}
	}
	return r.blk[seq-f]
}

// putBlocks adds the entries of pending blocks to target's stored blocks
// in tx, each only where the target has no state yet (no per-seq record, no
// stored entry). The entries must stay valid until tx commits. Writer only
// (or load).
func putBlocks(tx *bolt.Tx, target string, blks []pendBlock) error {
	sb := tx.Bucket(stateBucket(target))
	if sb == nil {
		return nil // a target no longer in the policy
	}
	bb, err := tx.CreateBucketIfNotExists(blockBucket(target))
	if err != nil {
		return err
	}
	sc := sb.Cursor()
	for _, pb := range blks {
		var b block
		k := seqKey(pb.first)
		if v := bb.Get(k); v != nil {
			// A damaged block is written again with what comes now: its
			// old entries are lost, so their messages read as not
			// finished, as they did damaged.
			decodeBlock(v, &b)
		}
		// Seqs of the block with a per-seq record: those records win.
		var taken uint64
		for sk, _ := sc.Seek(k); len(sk) == 8 && binary.BigEndian.Uint64(sk)-pb.first < blockSize; sk, _ = sc.Next() {
			taken |= 1 << (binary.BigEndian.Uint64(sk) - pb.first)
		}
		changed := false
		for j, rec := range pb.b {
			if rec != nil && b[j] == nil && taken&(1<<j) == 0 {
				b[j], changed = rec, true
			}
		}
		if !changed {
			continue
		}
		if err := bb.Put(k, appendBlock(nil, &b)); err != nil {
			return err
		}
	}
	return nil
}
