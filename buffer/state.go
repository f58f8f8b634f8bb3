package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/sluice-proxy/sluice/store"
)

// maxHistory bounds the attempts kept per message and target.
const maxHistory = store.MaxHistory

// A state record is crc32c [4] | the state's binary form (store.AppendState,
// about a tenth of the cost of JSON; it is written for every delivery: a
// journal frame, then bbolt at a checkpoint). Records written before it
// are crc32c | JSON and are read as such (store.DecodeState): a data
// directory needs no migration.

func encodeState(s *State) []byte {
	return appendState(make([]byte, 0, stateSize(s)), s)
}

// stateSize is an upper bound of the record of s.
func stateSize(s *State) int { return 4 + store.StateSize(s) }

// appendState appends the record of s to b.
func appendState(b []byte, s *State) []byte {
	start := len(b)
	b = store.AppendState(append(b, 0, 0, 0, 0), s)
	binary.BigEndian.PutUint32(b[start:], crc32.Checksum(b[start+4:], castagnoli))
	return b
}

func decodeState(b []byte) (*State, error) {
	if len(b) < 5 {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrCorrupt, len(b))
	}
	if crc32.Checksum(b[4:], castagnoli) != binary.BigEndian.Uint32(b) {
		return nil, fmt.Errorf("%w: state checksum mismatch", ErrCorrupt)
	}
	return store.DecodeState(b[4:])
}
