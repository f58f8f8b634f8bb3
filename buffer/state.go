package buffer

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"hash/crc32"
)

// maxHistory bounds the attempts kept per message and target.
const maxHistory = store.MaxHistory

// encodeState is crc32c [4] | JSON. JSON keeps the rare state records readable
// by hand (sluice inspect) at a cost that does not matter next to an HTTP call.
func encodeState(s *State) []byte {
	js, err := json.Marshal(s)
	if err != nil {
		panic("buffer: marshal state: " + err.Error()) // plain data; cannot fail
	}
	b := make([]byte, 4, 4+len(js))
	b = append(b, js...)
	binary.BigEndian.PutUint32(b, crc32.Checksum(js, castagnoli))
	return b
}

func decodeState(b []byte) (*State, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrCorrupt, len(b))
	}
	if crc32.Checksum(b[4:], castagnoli) != binary.BigEndian.Uint32(b) {
		return nil, fmt.Errorf("%w: state checksum mismatch", ErrCorrupt)
	}
	var s State
	if err := json.Unmarshal(b[4:], &s); err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
	}
	return &s, nil
}
