package buffer

import (
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sluice-proxy/sluice/internal/testutil"
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

// TestBadTombstoneReported: a tombstone that does not decode is reported by
// inspect --verify, and the retention pass that deletes it logs its seq; the
// valid tombstones beside it stay.
func TestBadTombstoneReported(t *testing.T) {
	var logs testutil.Buffer
	dir := t.TempDir()
	s, q := openTest(t, Config{Dir: dir, Retention: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, "a")
	young, _ := json.Marshal(tombstone{Expired: time.Now().UnixNano(), Targets: []tombTarget{{Name: "a", Was: Queued}}})
	testutil.Must(t, q.floorsDB.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketExpired)
		if err != nil {
			return err
		}
		if err := b.Put(seqKey(5), []byte("{not json")); err != nil {
			return err
		}
		return b.Put(seqKey(6), young)
	}))
	testutil.Must(t, s.Close())

	rep, err := Inspect(dir, true)
	testutil.Must(t, err)
	var found bool
	for _, d := range rep.Queues[0].Damaged {
		found = found || (d.Segment == "cursors.db" && d.Seq == 5 && strings.Contains(d.Err, "does not decode"))
	}
	if !found || len(rep.Queues[0].Damaged) != 1 {
		t.Fatalf("inspect --verify: %+v, want the tombstone at seq 5 and nothing else", rep.Queues[0].Damaged)
	}

	s, q = openTest(t, Config{Dir: dir, Retention: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, "a")
	q.pruneTombstones()
	if l := logs.String(); !strings.Contains(l, "do not decode") || !strings.Contains(l, "seqs=[5]") {
		t.Errorf("no log line names the tombstone deleted:\n%s", l)
	}
	var left []uint64
	testutil.Must(t, q.floorsDB.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketExpired).ForEach(func(k, _ []byte) error { left = append(left, binary.BigEndian.Uint64(k)); return nil })
	}))
	if len(left) != 1 || left[0] != 6 {
		t.Errorf("tombstones left %v, want [6]", left)
	}
	testutil.Must(t, s.Close())
}
