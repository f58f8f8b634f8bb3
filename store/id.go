package store

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"strings"
)

// ID names a message: its seq and 64 random bits. The random tag is stored
// with the record and checked on lookup, so ids cannot be guessed from one
// another even though seqs are consecutive.
type ID struct {
	seq uint64
	tag [8]byte
}

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// idLen is the length of ID.String: 16 bytes in base32.
const idLen = 26

// NewTag returns 64 random bits for a new message's id.
func NewTag() (t [8]byte) {
	if _, err := rand.Read(t[:]); err != nil {
		panic("store: crypto/rand failed: " + err.Error()) // never on Linux; nothing sane to do
	}
	return t
}

// NewTags fills b (8 bytes a tag) with random bits for as many new ids,
// with one read: each tag is as random as NewTag's.
func NewTags(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic("store: crypto/rand failed: " + err.Error())
	}
}

// NewID makes the id of the message seq whose random tag is tag.
func NewID(seq uint64, tag [8]byte) ID { return ID{seq: seq, tag: tag} }

// Tag returns the id's random part.
func (id ID) Tag() [8]byte { return id.tag }

// Seq returns the message's position in its queue.
func (id ID) Seq() uint64 { return id.seq }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// String returns the id as 26 lower-case base32 characters (Crockford's alphabet).
func (id ID) String() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], id.seq)
	copy(b[8:], id.tag[:])
	return idEncoding.EncodeToString(b[:])
}

// AppendTo appends the String form of id to dst without allocating.
func (id ID) AppendTo(dst []byte) []byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], id.seq)
	copy(b[8:], id.tag[:])
	return idEncoding.AppendEncode(dst, b[:])
}

// ParseID parses the form produced by ID.String.
func ParseID(s string) (ID, error) {
	if len(s) != idLen {
		return ID{}, fmt.Errorf("invalid message id %q: want %d characters", s, idLen)
	}
	b, err := idEncoding.DecodeString(strings.ToLower(s))
	if err != nil || len(b) != 16 {
		return ID{}, fmt.Errorf("invalid message id %q", s)
	}
	var id ID
	id.seq = binary.BigEndian.Uint64(b[:8])
	copy(id.tag[:], b[8:])
	return id, nil
}
