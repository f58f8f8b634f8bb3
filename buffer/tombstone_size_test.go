package buffer

import (
	"encoding/json"
	"testing"
	"time"
)

// TestTombstoneSize pins the size the package doc gives for a tombstone:
// at most 160 bytes of JSON for one target with a 9-byte name (the widest
// tag, phase, attempts and status), plus the key; at most 50 more for each
// further target.
func TestTombstoneSize(t *testing.T) {
	at := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC).UnixNano()
	one := tombTarget{Name: "inventory", Was: Retrying, Attempts: 12, Status: 503}
	ts := tombstone{Tag: [8]byte{255, 255, 255, 255, 255, 255, 255, 255}, At: at, Expired: at, Targets: []tombTarget{one}}
	b, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 160 {
		t.Errorf("one target: %d bytes, the doc says at most 160: %s", len(b), b)
	}
	ts.Targets = append(ts.Targets, one)
	b2, _ := json.Marshal(ts)
	if d := len(b2) - len(b); d > 50 {
		t.Errorf("a second target adds %d bytes, the doc says at most 50", d)
	}
}
