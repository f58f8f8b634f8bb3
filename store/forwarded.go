package store

import (
	"bytes"
	"context"
	"encoding/hex"
	"strconv"
)

// ForwardedHeader is the header name (with a NUL byte: no HTTP request
// can carry it) that marks a stored record as a request the proxy
// forwarded at once on a spillover route; its value is the target's
// status code. Such a record has no body: it exists so that the request's
// idempotency key is remembered and the request is counted as delivered.
const ForwardedHeader = "\x00sluice-forwarded"

// ForwardedValue is the value of ForwardedHeader: the status code and the
// Fingerprint of the request as forwarded (its body is not in the record,
// so a repeat is checked against this), "201 <32 hex digits>".
func ForwardedValue(status int, fp [16]byte) []byte {
	v := strconv.AppendInt(nil, int64(status), 10)
	v = append(v, ' ')
	return hex.AppendEncode(v, fp[:])
}

func parseForwarded(v []byte) (status int, fp [16]byte, ok bool) {
	st, h, found := bytes.Cut(v, []byte{' '})
	n, err := strconv.Atoi(string(st))
	if err != nil {
		return 0, fp, false
	}
	if found {
		if b, err := hex.DecodeString(string(h)); err == nil && len(b) == 16 {
			copy(fp[:], b)
		}
	}
	return n, fp, true
}

// Forwarded reports whether m is the record of a forwarded request, and
// the status code the target answered.
func (m *Message) Forwarded() (status int, ok bool) {
	for _, h := range m.Header {
		if h.Name == ForwardedHeader {
			status, _, ok = parseForwarded([]byte(h.Value))
			return status, ok
		}
	}
	return 0, false
}

// ForwardRecorder is an optional extension of Queue, for spillover routes:
// requests the proxy forwarded at once are remembered by their idempotency
// key and counted as delivered.
type ForwardRecorder interface {
	// FindKey reports whether key names a message of the queue within the
	// retention (stored or forwarded), and its id.
	FindKey(ctx context.Context, key []byte) (ID, bool, error)
	// AppendForwarded stores d as a request already delivered to every
	// target with status (its body is not stored, only its Fingerprint,
	// against which a repeat of its key is checked; without a key nothing
	// is ever checked against it, and d.Body may be nil): no consumer hands it
	// out, Lookup, the list and the counts show it delivered once a
	// consumer has passed it. A key seen before stores nothing and sets
	// d.Duplicate, as AppendDraft.
	AppendForwarded(ctx context.Context, d *Draft, status int) (ID, error)
}
