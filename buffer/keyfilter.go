package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// keyFilter is a blocked Bloom filter of a sealed segment's idempotency keys:
// "is this key possibly in the segment?" without a bbolt transaction. A key
// sets keyFilterProbes bits in one 512-bit block (one cache line), chosen by
// its hash (keys are SHA-256 prefixes already, see keyHash). It never says
// no for a key that was added; it says maybe for ~1% of keys that were not,
// and then the segment's bbolt is asked. ~10 bits of heap per keyed message
// of the sealed segments, written once at seal into the segment's bbolt file
// (info bucket, key "key_filter", with a CRC-32C) and read back at start-up.
type keyFilter struct {
	blocks []uint64 // len is a multiple of 8: blocks of 512 bits
}

const (
	keyFilterBitsPerKey = 10
	keyFilterProbes     = 6
	keyFilterVersion    = 1
)

var keyKeyFilter = []byte("key_filter")

// newKeyFilter returns an empty filter sized for n keys (none for n == 0:
// it then says no to every key).
func newKeyFilter(n int) *keyFilter {
	if n <= 0 {
		return &keyFilter{}
	}
	nb := (n*keyFilterBitsPerKey + 511) / 512
	return &keyFilter{blocks: make([]uint64, nb*8)}
}

// positions returns key's block (its first word's index) and the word its
// bit positions are taken from, 9 bits a probe.
func (f *keyFilter) positions(key [16]byte) (block int, bits uint64) {
	nb := uint64(len(f.blocks) / 8)
	block = int(binary.BigEndian.Uint64(key[:8])%nb) * 8
	return block, binary.BigEndian.Uint64(key[8:])
}

func (f *keyFilter) add(key [16]byte) {
	if len(f.blocks) == 0 {
		return
	}
	b, h := f.positions(key)
	for range keyFilterProbes {
		bit := h & 511
		f.blocks[b+int(bit>>6)] |= 1 << (bit & 63)
		h = h>>9 | h<<55
	}
}

// mayContain reports whether key may have been added: false is certain.
func (f *keyFilter) mayContain(key [16]byte) bool {
	if len(f.blocks) == 0 {
		return false
	}
	b, h := f.positions(key)
	for range keyFilterProbes {
		bit := h & 511
		if f.blocks[b+int(bit>>6)]&(1<<(bit&63)) == 0 {
			return false
		}
		h = h>>9 | h<<55
	}
	return true
}

// marshal encodes f: version u8 | words u32 | words × u64 | crc32c u32.
func (f *keyFilter) marshal() []byte {
	b := make([]byte, 0, 1+4+8*len(f.blocks)+4)
	b = append(b, keyFilterVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(len(f.blocks)))
	for _, w := range f.blocks {
		b = binary.BigEndian.AppendUint64(b, w)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errKeyFilter = errors.New("key filter damaged")

// unmarshalKeyFilter decodes what marshal wrote; the error says what is wrong.
// b may be bbolt's memory: the filter does not alias it.
func unmarshalKeyFilter(b []byte) (*keyFilter, error) {
	if len(b) < 1+4+4 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than its header", errKeyFilter, len(b))
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errKeyFilter)
	}
	if body[0] != keyFilterVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", errKeyFilter, body[0], keyFilterVersion)
	}
	words := binary.BigEndian.Uint32(body[1:5])
	if words%8 != 0 || uint64(len(body)-5) != uint64(words)*8 {
		return nil, fmt.Errorf("%w: %d words in %d bytes", errKeyFilter, words, len(body)-5)
	}
	f := &keyFilter{blocks: make([]uint64, words)}
	for i := range f.blocks {
		f.blocks[i] = binary.BigEndian.Uint64(body[5+8*i:])
	}
	return f, nil
}
