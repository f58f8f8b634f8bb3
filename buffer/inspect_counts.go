package buffer

import (
	"path/filepath"
	"sort"

	"github.com/sluice-proxy/sluice/store"
	bolt "go.etcd.io/bbolt"
)

// offlineCounts counts a queue's messages by phase for each target with
// the server stopped, through the same segmentPhases and store.Counts as
// the running queue's Counts: the outcomes still in the journals (not yet
// in the segments' bbolt files) are laid over the states, and the
// tombstones of expired messages are counted as expired.
type offlineCounts struct {
	dir     string
	names   []string // targets, sorted
	reports []*TargetReport
	journal map[pendKey][]byte // target index, seq -> state
	starts  []uint64           // by target index: its first seq (targets_start.go)
	qr      *QueueReport
}

func newOfflineCounts(dir string, targets map[string]*TargetReport, qr *QueueReport) *offlineCounts {
	oc := &offlineCounts{dir: dir, journal: map[pendKey][]byte{}, qr: qr}
	for name := range targets {
		oc.names = append(oc.names, name)
	}
	sort.Strings(oc.names)
	idx := map[string]int{}
	for i, name := range oc.names {
		oc.reports = append(oc.reports, targets[name])
		targets[name].Target = name
		idx[name] = i
	}
	oc.starts = make([]uint64, len(oc.names))
	if db, err := openReadOnly(filepath.Join(dir, "cursors.db")); err == nil {
		starts, _ := readStarts(db)
		db.Close()
		for i, name := range oc.names {
			oc.starts[i] = starts[name]
		}
	}
	for _, g := range journals(dir) {
		recs, _, err := readJournal(filepath.Join(dir, journalName(g)), g)
		if err != nil {
			qr.Damaged = append(qr.Damaged, Damage{Segment: journalName(g), Err: "cannot read: " + err.Error()})
			continue
		}
		for _, r := range recs {
			if t, ok := idx[r.target]; ok {
				k := pendKey{t, r.seq}
				if _, seen := oc.journal[k]; !seen { // the first outcome wins, as at start-up
					oc.journal[k] = append([]byte(nil), r.state...)
				}
			}
		}
	}
	return oc
}

// segment counts seqs first..last of a segment.
func (oc *offlineCounts) segment(tx *bolt.Tx, first, last uint64) error {
	if last < first || len(oc.names) == 0 {
		return nil
	}
	return segmentPhases(tx, oc.names, first, last, func(t int, seq uint64) ([]byte, bool) {
		return oc.journal[pendKey{t, seq}], false
	}, func(seq uint64, _ []*State, phases []Phase) bool {
		for t, p := range phases {
			if seq >= oc.starts[t] {
				oc.reports[t].Add(p)
			}
		}
		return true
	})
}

// finish counts the tombstones of expired messages.
func (oc *offlineCounts) finish() {
	db, err := openReadOnly(filepath.Join(oc.dir, "cursors.db"))
	if err != nil {
		return // reported by inspectQueue
	}
	defer db.Close()
	eachTombstone(db, 0, func(seq uint64, ts *tombstone) bool {
		if oc.qr.FirstSeq != 0 && seq >= oc.qr.FirstSeq {
			return false // its segment is still there (a deletion cut short)
		}
		for _, tt := range ts.Targets {
			for i, name := range oc.names {
				if name == tt.Name {
					oc.reports[i].Add(store.Expired)
				}
			}
		}
		return true
	})
}
