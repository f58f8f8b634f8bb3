package buffer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/store"
	bolt "go.etcd.io/bbolt"
)

// Listing and counting (store.Lister). Both walk the queue by seq: first
// the tombstones of expired messages (all below the oldest segment), then
// each segment in chunks of listChunk seqs, each chunk one bbolt read
// transaction with the journal's outcomes and the in-flight claims taken
// at the same instant under Queue.mu (as Lookup does), so a message is
// seen in exactly one phase per target. Memory is one chunk's records and
// states; the time is one state decode per (message, target), and, for
// listing or a time-bounded count, one read of the chunk's records from
// the log. A count over every message reads no record: the segments'
// seq ranges give the messages.

// listChunk is the number of seqs read per transaction.
const listChunk = 512

// walkItem is one message as the walk sees it.
type walkItem struct {
	seq     uint64
	at      time.Time
	tag     [8]byte
	key     []byte
	damaged bool
	// Per target index: the phase, and the state record (nil: none).
	phases []Phase
	states []*State
	stone  *tombstone // an expired message: phases are "" for targets not in it
}

// phaseOf is where a message stands for a target, given its state record
// (nil: none yet) and whether it is in flight now. It is the one place
// where buffer's records become phases.
func phaseOf(st *State, inflight bool) Phase {
	switch {
	case inflight:
		return InFlight
	case st == nil:
		return Queued
	case st.Phase == Dead:
		// A purge before the Purged phase existed kept Dead with a note.
		if a, ok := st.Last(); ok && a.Status == 0 && strings.HasPrefix(a.Error, "purged from the dead letters") {
			return store.Purged
		}
	}
	return st.Phase
}

// walk calls fn for each message with a seq above after, in seq order,
// until fn returns false or limit messages were seen. withRecords reads each
// message's accepted time, tag and key (else they are zero, but for
// expired ones); since, when not zero, skips segments whose last append is
// before it. It returns the last seq seen and whether the queue ended.
func (q *Queue) walk(after uint64, limit int, withRecords bool, since time.Time, fn func(*walkItem) bool) (last uint64, end bool, err error) {
	last = after
	seen := 0
	q.mu.Lock()
	if q.segs == nil {
		q.mu.Unlock()
		return last, false, ErrClosed
	}
	type segSnap struct {
		s           *segment
		first, last uint64
		lastAppend  time.Time
	}
	segs := make([]segSnap, 0, len(q.segs))
	for _, s := range q.segs {
		segs = append(segs, segSnap{s, s.first, s.last, s.lastAppend})
	}
	q.mu.Unlock()

	stop := false
	if len(segs) == 0 || after+1 < segs[0].first {
		err = eachTombstone(q.floorsDB, after, func(seq uint64, ts *tombstone) bool {
			if len(segs) > 0 && seq >= segs[0].first {
				return false // a tombstone written again before its segment went
			}
			if seen >= limit {
				stop = true
				return false
			}
			seen++
			last = seq
			if !fn(q.stoneItem(seq, ts)) {
				stop = true
				return false
			}
			return true
		})
		if err != nil || stop {
			return last, false, err
		}
	}
	for _, sg := range segs {
		if sg.last < sg.first || sg.last <= last {
			continue
		}
		if !since.IsZero() && !sg.lastAppend.IsZero() && sg.lastAppend.Before(since) {
			last = sg.last
			continue
		}
		for from := max(last+1, sg.first); from <= sg.last; {
			n := int(min(uint64(listChunk), sg.last-from+1, uint64(limit-seen)))
			if n == 0 {
				return last, false, nil
			}
			items, err := q.readChunk(sg.s, from, n, withRecords)
			if errors.Is(err, ErrClosed) {
				break // deleted by the retention meanwhile: its unfinished messages are tombstones now, behind us
			}
			if err != nil {
				return last, false, err
			}
			for i := range items {
				seen++
				last = items[i].seq
				if !fn(&items[i]) {
					return last, false, nil
				}
			}
			from += uint64(n)
		}
	}
	if seen >= limit {
		// The head may have grown since the snapshot; say so only if not.
		return last, q.Appended() <= last, nil
	}
	return last, true, nil
}

// stoneItem is the walk's item for expired message seq: Expired for the
// targets its tombstone names, "" for the others.
func (q *Queue) stoneItem(seq uint64, ts *tombstone) *walkItem {
	it := &walkItem{seq: seq, at: unixTime(ts.At), tag: ts.Tag, key: []byte(ts.Key), stone: ts,
		phases: make([]Phase, len(q.targets)), states: make([]*State, len(q.targets))}
	for _, tt := range ts.Targets {
		for i, t := range q.targets {
			if t == tt.Name {
				it.phases[i] = store.Expired
			}
		}
	}
	return it
}

// readChunk reads seqs from..from+n-1 of s: their states (with the
// journal's outcomes and in-flight claims of that instant) and, with
// withRecords, their records' heads.
func (q *Queue) readChunk(s *segment, from uint64, n int, withRecords bool) (items []walkItem, err error) {
	nt := len(q.targets)
	pend := make([][]byte, n*nt)
	busy := make([]bool, n*nt)
	q.mu.Lock()
	if q.segs == nil {
		q.mu.Unlock()
		return nil, ErrClosed
	}
	tx, err := s.db.Begin(false)
	if err != nil {
		q.mu.Unlock()
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return nil, ErrClosed
		}
		return nil, err
	}
	for t, c := range q.consumers {
		for i := range n {
			seq := from + uint64(i)
			pend[i*nt+t] = q.pending.get(s, t, seq)
			_, busy[i*nt+t] = c.inflight[seq]
		}
	}
	q.mu.Unlock()
	defer tx.Rollback()
	err = safeTx(func() error {
		items = make([]walkItem, n)
		for i := range items {
			items[i] = walkItem{seq: from + uint64(i), phases: make([]Phase, nt), states: make([]*State, nt)}
		}
		err := segmentPhases(tx, q.targets, from, from+uint64(n)-1, func(t int, seq uint64) ([]byte, bool) {
			k := int(seq-from)*nt + t
			return pend[k], busy[k]
		}, func(seq uint64, states []*State, phases []Phase) bool {
			it := &items[seq-from]
			copy(it.states, states)
			copy(it.phases, phases)
			for t := range phases {
				if seq < q.starts[t] {
					it.phases[t], it.states[t] = "", nil // before the target existed: not its message
				}
			}
			return true
		})
		if err != nil || !withRecords {
			return err
		}
		_, recs, err := s.log.readSpan(from, n, nil)
		if err != nil {
			return err
		}
		for i := range items {
			var rec []byte
			if i < len(recs) {
				rec = recs[i]
			}
			if rec == nil {
				if rec, err = s.log.read(items[i].seq, nil); err != nil {
					if errors.Is(err, ErrClosed) {
						return err
					}
					items[i].damaged = true
					continue
				}
			}
			items[i].at, items[i].tag, items[i].key = recordHead(rec)
		}
		return nil
	})
	return items, err
}

// safeTx runs fn, turning a fault in a mapped file into ErrCorrupt.
func safeTx(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: segment read failed: %v", ErrCorrupt, p)
		}
	}()
	return fn()
}

// segmentPhases reads, in tx, the state of every target for seqs
// from..to, lays over it what overlay says (an outcome not yet in bbolt,
// and whether the message is in flight), and calls fn with each seq's
// states and phases (the slices are reused: copy what is kept). The
// online walk and the offline inspect both count through it.
func segmentPhases(tx *bolt.Tx, targets []string, from, to uint64, overlay func(t int, seq uint64) ([]byte, bool), fn func(seq uint64, states []*State, phases []Phase) bool) error {
	curs := make([]*bolt.Cursor, len(targets))
	keys := make([][]byte, len(targets))
	vals := make([][]byte, len(targets))
	blocks := make([]*blockReader, len(targets))
	for t, name := range targets {
		if b := tx.Bucket(stateBucket(name)); b != nil {
			curs[t] = b.Cursor()
			keys[t], vals[t] = curs[t].Seek(seqKey(from))
		}
		blocks[t] = newBlockReader(tx, name)
	}
	states := make([]*State, len(targets))
	phases := make([]Phase, len(targets))
	for seq := from; seq <= to; seq++ {
		for t := range targets {
			var v []byte
			for curs[t] != nil && keys[t] != nil && binary.BigEndian.Uint64(keys[t]) < seq {
				keys[t], vals[t] = curs[t].Next()
			}
			if keys[t] != nil && binary.BigEndian.Uint64(keys[t]) == seq {
				v = vals[t]
			} else {
				v = blocks[t].get(seq)
			}
			var busy bool
			if overlay != nil {
				var pv []byte
				pv, busy = overlay(t, seq)
				if v == nil {
					v = pv
				}
			}
			states[t] = nil
			if v != nil {
				if st, err := decodeState(v); err == nil {
					states[t] = st
				}
			}
			phases[t] = phaseOf(states[t], busy)
		}
		if !fn(seq, states, phases) {
			return nil
		}
	}
	return nil
}

func (q *Queue) targetIndex(target string) (int, error) {
	for i, t := range q.targets {
		if t == target {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w: %q", ErrUnknownTarget, target)
}

// Messages implements store.Lister.
func (q *Queue) Messages(f store.Filter, after uint64, limit int, fn func(*store.Row) bool) (uint64, bool, error) {
	ti := -1
	if f.Target != "" {
		var err error
		if ti, err = q.targetIndex(f.Target); err != nil {
			return after, false, err
		}
	}
	if limit <= 0 {
		limit = 1000
	}
	var key []byte
	if f.Key != "" {
		key = []byte(f.Key)
	}
	each := func(it *walkItem) bool {
		if !f.Since.IsZero() && it.at.Before(f.Since) || !f.Until.IsZero() && !it.at.Before(f.Until) {
			return true
		}
		if key != nil && string(it.key) != string(key) {
			return true
		}
		row := store.Row{AcceptedAt: it.at, Key: string(it.key), ID: store.NewID(it.seq, it.tag)}
		match := f.Phase == "" && f.Status == 0
		for i, t := range q.targets {
			if ti >= 0 && i != ti || it.phases[i] == "" {
				continue
			}
			rt := rowTarget(t, it, i)
			if (f.Phase == "" || rt.Phase == f.Phase) && (f.Status == 0 || rt.Status == f.Status) {
				match = true
			}
			row.Targets = append(row.Targets, rt)
		}
		if len(row.Targets) == 0 || !match {
			return true
		}
		return fn(&row)
	}
	if key != nil {
		return q.messagesByKey(key, after, limit, each)
	}
	return q.walk(after, limit, true, f.Since, each)
}

// messagesByKey is Messages with a key: the key's index names the one
// live message that has it (as for a repeated Idempotency-Key), so only
// the tombstones of expired messages are scanned, not every message.
func (q *Queue) messagesByKey(key []byte, after uint64, limit int, each func(*walkItem) bool) (uint64, bool, error) {
	q.mu.Lock()
	if q.segs == nil {
		q.mu.Unlock()
		return after, false, ErrClosed
	}
	first := q.segs[0].first
	q.mu.Unlock()
	last := after
	if after+1 < first {
		// Expired ones: a scan of the tombstones, which are few next to
		// the messages (bounded by limit like a walk).
		seen := 0
		stop := false
		err := eachTombstone(q.floorsDB, after, func(seq uint64, ts *tombstone) bool {
			if seq >= first {
				return false
			}
			if seen++; seen > limit {
				stop = true
				return false
			}
			last = seq
			if ts.Key != string(key) {
				return true
			}
			if !each(q.stoneItem(seq, ts)) {
				stop = true
				return false
			}
			return true
		})
		if err != nil || stop {
			return last, false, err
		}
		last = max(last, first-1)
	}
	id, found, err := q.FindKey(context.Background(), key)
	if err != nil || !found || id.Seq() <= last {
		return max(last, q.Appended()), err == nil, err
	}
	_, _, err = q.walk(id.Seq()-1, 1, true, time.Time{}, each)
	return max(id.Seq(), q.Appended()), err == nil, err
}

// rowTarget is item it's standing for target index i.
func rowTarget(name string, it *walkItem, i int) store.RowTarget {
	rt := store.RowTarget{Target: name, Phase: it.phases[i]}
	if it.stone != nil {
		for _, tt := range it.stone.Targets {
			if tt.Name == name {
				rt.Attempts, rt.Status, rt.At, rt.Reason = tt.Attempts, tt.Status, unixTime(it.stone.Expired), tt.reason()
			}
		}
		return rt
	}
	if st := it.states[i]; st != nil {
		rt.Attempts = st.Attempts
		if a, ok := st.Last(); ok {
			rt.Status, rt.At = a.Status, a.At
			if rt.Phase == Dead || rt.Phase == store.Purged {
				rt.Reason = a.Error
			}
		}
	}
	if it.damaged && rt.Reason == "" && (rt.Phase == Dead || rt.Phase == store.Purged) {
		rt.Reason = "damaged record"
	}
	return rt
}

// Counts implements store.Lister: target's messages accepted in [since,
// until) by phase. Without bounds it reads no message record.
func (q *Queue) Counts(target string, since, until time.Time) (store.Counts, error) {
	ti, err := q.targetIndex(target)
	if err != nil {
		return store.Counts{}, err
	}
	c := store.Counts{Target: target}
	bounded := !since.IsZero() || !until.IsZero()
	var after uint64
	for {
		last, end, err := q.walk(after, 1<<20, bounded, since, func(it *walkItem) bool {
			if bounded && (!since.IsZero() && it.at.Before(since) || !until.IsZero() && !it.at.Before(until)) {
				return true
			}
			if it.phases[ti] != "" {
				c.Add(it.phases[ti])
			}
			return true
		})
		if err != nil {
			return c, err
		}
		if end || last == after {
			return c, nil
		}
		after = last
	}
}

// QueueTargets returns the targets the queue name in the data directory
// dir has cursors for, sorted: what an offline reader (sluice reconcile)
// opens the queue with. The server must be stopped.
func QueueTargets(dir, name string) ([]string, error) {
	path := filepath.Join(dir, "queues", name, "cursors.db")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no queue %q in %s", name, dir)
	}
	db, err := openReadOnly(path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	floors := map[string]bool{}
	err = safeView(db, func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketFloors); b != nil {
			return b.ForEach(func(k, _ []byte) error { floors[string(k)] = true; return nil })
		}
		return nil
	})
	targets := make([]string, 0, len(floors))
	for t := range floors {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	return targets, err
}
