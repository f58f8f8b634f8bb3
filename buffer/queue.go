package buffer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/store"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketFloors = []byte("floors")

// maxBatch bounds the changes one commit takes, so one commit's latency
// stays bounded under any load.
const maxBatch = 4096

// Queue is one route's durable log and its consumers. It is safe for
// concurrent use.
type Queue struct {
	name    string
	dir     string
	store   *Store
	cfg     *Config
	log     *slog.Logger
	targets []string

	reqs    chan change   // to the writer (commit.go)
	senders atomic.Int64  // hand-offs under way (see hand)
	closed  atomic.Bool   // set by Close, before closing is closed
	closing chan struct{} // closed by Close
	stopped chan struct{} // closed when the writer has exited
	once    sync.Once

	floorsDB *bolt.DB
	bytes    atomic.Int64
	appended atomic.Uint64 // nextSeq - 1, for Appended without mu

	mu        sync.Mutex // guards the fields below and every segment's mutable fields
	segs      []*segment // by first seq; the last one is the head
	nextSeq   uint64     // seq of the next append
	consumers []*Consumer
	expired   uint64 // messages expired undelivered, summed over targets
	damaged   uint64 // messages skipped in damaged segments, summed over targets

	savedNext  uint64     // writer only: the next seq as last persisted with the floors
	closeErr   error      // set by the writer before it stops: what the final sync and closes failed
	openedNext uint64     // nextSeq when the queue was opened: later messages have no state record from an earlier run
	jrn        *journal   // writer only: the outcome journal
	starts     []uint64   // per target index: its first seq (targets_start.go); read-only after load
	jbuf       []byte     // writer only: the journal frames of one commit
	ckptFails  failureLog // writer only: checkpoints that failed
	// pending holds the outcomes in the journal that are not yet in their
	// segments' bbolt files (pending.go). Written by the writer under mu;
	// read under mu.
	pending      *pendingSet
	lastPressure time.Time  // writer only: last retention pass forced by ErrFull
	rollFails    failureLog // writer only: segment rolls that failed
	commitFails  failureLog // writer only: append commits that failed
	wbFail       failureLog // writer only, SyncNever: writeback starts that failed
	wbuf         []byte     // writer only: the frames of one commit
	wlocs        []recLoc   // writer only: where they go
	cs           commitSet  // writer only: the changes of one commit

	// Group-commit figures since Open, for WriterStats.
	commits, committed, commitNanos, failedCommits, refused atomic.Uint64
	checkpoints                                             atomic.Uint64
	writebacks                                              atomic.Uint64 // SyncNever: writeback starts, for tests
}

// WriterStats is what the queue's writer has done since Open: how many
// commits, how many requests (appends and state changes) they carried, and
// the wall time spent committing (writes and fsyncs). Under load the writer
// commits back to back, so Time/Commits is the group-commit cycle that every
// acknowledgement waits for. FailedCommits and Refused count the append
// commits that failed to write (e.g. ENOSPC) and the appends they refused
// with ErrIO; the log shows them at most once a second. Checkpoints counts
// the checkpoints that wrote delivered outcomes from the outcome journal
// into the segments' .db files (with none pending, none is made); when it
// moves, the outcomes it wrote are no longer held in memory.
type WriterStats struct {
	Commits       uint64
	Requests      uint64
	Time          time.Duration
	FailedCommits uint64
	Refused       uint64
	Checkpoints   uint64
}

// WriterStats returns the writer's figures so far.
func (q *Queue) WriterStats() WriterStats {
	return WriterStats{
		Commits:       q.commits.Load(),
		Requests:      q.committed.Load(),
		Time:          time.Duration(q.commitNanos.Load()),
		FailedCommits: q.failedCommits.Load(),
		Refused:       q.refused.Load(),
		Checkpoints:   q.checkpoints.Load(),
	}
}

func openQueue(s *Store, name string, targets []string) (*Queue, error) {
	if len(targets) == 0 {
		return nil, errors.New("no targets")
	}
	seen := map[string]bool{}
	for _, t := range targets {
		if !queueName.MatchString(t) || seen[t] {
			return nil, fmt.Errorf("invalid or duplicate target name %q", t)
		}
		seen[t] = true
	}
	dir := filepath.Join(s.cfg.Dir, "queues", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	q := &Queue{
		name: name, dir: dir, store: s, cfg: &s.cfg, log: s.cfg.Logger.With("queue", name),
		targets: append([]string(nil), targets...),
		reqs:    make(chan change, maxBatch),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if err := q.load(); err != nil {
		q.closeFiles()
		return nil, err
	}
	go q.writer()
	return q, nil
}

// load opens the floors and the segments; it reads no messages but the
// head's log (and the log of a segment it has to rebuild).
//
// Damage to one file loses at most what that file alone held:
//   - a segment log without its bbolt file (deleted, or never made) that no
//     deletion marker explains, and a segment whose bbolt file is damaged,
//     get a new bbolt file made from the log; the delivery state the old
//     one held is lost, so every target whose floor had passed the segment
//     is moved back to its first seq, and its messages are delivered again
//     (at least once: duplicates, never a loss);
//   - new messages start above every floor and above the last seq ever
//     handed out (as persisted with the floors), so a lost log tail never
//     makes a new message look delivered;
//   - messages that no longer exist at or above a target's floor (a lost
//     tail, a segment moved aside) are counted as damaged and logged.
func (q *Queue) load() error {
	var err error
	q.floorsDB, err = bolt.Open(filepath.Join(q.dir, "cursors.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return fmt.Errorf("open cursors: %s is held by another process: is a sluice still running on this data directory?", filepath.Join(q.dir, "cursors.db"))
	}
	if err != nil {
		return fmt.Errorf("open cursors: %w", err)
	}
	floors, hwm, err := q.readFloors()
	if err != nil {
		return fmt.Errorf("read cursors: %w", err)
	}
	for _, first := range finishDeletions(q.dir) {
		q.log.Info("finished deleting a segment whose deletion was interrupted", "segment", segLabel(first))
	}
	firsts, err := listSegments(q.dir)
	if err != nil {
		return err
	}
	have := map[uint64]bool{}
	for _, f := range firsts {
		have[f] = true
	}
	var rebuilt []uint64 // segments whose delivery state was lost
	for _, first := range orphanLogs(q.dir, have) {
		n, err := rebuildSegment(q.dir, first, q.targets, q.cfg)
		if err != nil {
			q.moveAside(first, err)
			continue
		}
		if n == 0 {
			q.log.Warn("removed an empty segment log that had no state file", "segment", segLabel(first))
			continue
		}
		q.log.Error("segment state file missing: rebuilt it from the segment's log; its messages will be delivered again",
			"segment", segLabel(first), "messages", n)
		firsts = append(firsts, first)
		rebuilt = append(rebuilt, first)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	for _, first := range firsts {
		seg, err := openSegment(q.dir, first, q.targets, q.cfg, q.log)
		if errors.Is(err, errOldFormat) {
			return err // the caller closes what is open; nothing is moved
		}
		if err != nil && !slices.Contains(rebuilt, first) {
			// The state file is damaged; the log may not be. Keep the old
			// file aside and rebuild from the log.
			dbPath := filepath.Join(q.dir, segmentName(first))
			if rerr := os.Rename(dbPath, dbPath+".damaged"); rerr == nil {
				if n, rerr := rebuildSegment(q.dir, first, q.targets, q.cfg); rerr == nil && n > 0 {
					q.log.Error("segment state file damaged: moved aside as .damaged and rebuilt from the segment's log; its messages will be delivered again",
						"segment", segLabel(first), "messages", n, "err", err)
					rebuilt = append(rebuilt, first)
					seg, err = openSegment(q.dir, first, q.targets, q.cfg, q.log)
				}
			}
		}
		if err != nil {
			q.moveAside(first, err)
			continue
		}
		q.segs = append(q.segs, seg)
	}
	// A rebuilt segment's outcomes are gone: every target whose floor
	// passed it goes back to its start. Persisted before anything else is
	// written, so that a crash now cannot leave the new state file and the
	// old floors.
	for t, f := range floors {
		for _, first := range rebuilt {
			if f > first {
				q.log.Error("target moved back to deliver a rebuilt segment again", "target", t, "segment", segLabel(first), "from", f)
				f = first
			}
		}
		floors[t] = f
	}
	if len(rebuilt) > 0 {
		if err := q.writeFloors(floors, hwm); err != nil {
			return fmt.Errorf("write cursors: %w", err)
		}
	}
	// Only the last segment may be unsealed: one before it is a roll that a
	// crash interrupted (or a rebuilt segment); seal it now.
	for _, seg := range q.segs {
		if !seg.sealed && seg != q.segs[len(q.segs)-1] {
			if err := seg.seal(q.dir); err != nil {
				return fmt.Errorf("seal segment %s: %w", segmentName(seg.first), err)
			}
		}
	}
	// The next seq: above what the log holds, every floor, and the last
	// seq handed out as of the last save. A head that ends below it is
	// sealed (a segment's seqs have no holes) and a new one begins there.
	next := max(uint64(1), hwm)
	for _, f := range floors {
		next = max(next, f)
	}
	if n := len(q.segs); n > 0 {
		next = max(next, q.segs[n-1].last+1)
	}
	if n := len(q.segs); n > 0 && !q.segs[n-1].sealed && q.segs[n-1].last+1 < next {
		head := q.segs[n-1]
		q.log.Error("the log ends below the last seq handed out (its tail was lost); new messages start after it",
			"segment", segLabel(head.first), "last", head.last, "next", next)
		if err := head.seal(q.dir); err != nil {
			return fmt.Errorf("seal segment %s: %w", segmentName(head.first), err)
		}
	}
	if n := len(q.segs); n == 0 || q.segs[n-1].sealed {
		seg, err := createSegment(q.dir, next, q.targets, q.cfg)
		if err != nil {
			return fmt.Errorf("create segment: %w", err)
		}
		q.segs = append(q.segs, seg)
	}
	head := q.segs[len(q.segs)-1]
	q.nextSeq = head.last + 1
	q.appended.Store(q.nextSeq - 1)
	for _, s := range q.segs {
		q.bytes.Add(s.size)
	}
	// A target seen for the first time starts at the end of the log, and
	// that start is recorded now, so a restart cannot move it.
	added := false
	var fresh []string
	for _, t := range q.targets {
		if _, ok := floors[t]; !ok {
			floors[t], added = q.nextSeq, true
			fresh = append(fresh, t)
		}
	}
	if err := q.loadStarts(fresh, q.nextSeq); err != nil { // before the floors: a crash between them leaves the target new
		return fmt.Errorf("write cursors: %w", err)
	}
	if added || hwm < q.nextSeq {
		if err := q.writeFloors(floors, q.nextSeq); err != nil {
			return fmt.Errorf("write cursors: %w", err)
		}
	}
	q.savedNext = q.nextSeq
	q.openedNext = q.nextSeq
	q.pending = newPendingSet()
	if err := q.replayJournals(); err != nil {
		return err
	}
	for i, t := range q.targets {
		floor := floors[t]
		if floor < q.segs[0].first {
			floor = q.segs[0].first
		}
		if lost := q.missingFrom(floor); lost > 0 {
			q.damaged += lost
			q.log.Error("messages at or above the target's floor are missing from the log (a lost tail or a segment moved aside); they cannot be delivered",
				"target", t, "floor", floor, "missing", lost)
		}
		q.consumers = append(q.consumers, &Consumer{
			q: q, target: t, idx: i, next: floor, saved: floor,
			inflight: map[uint64]struct{}{}, released: map[uint64]struct{}{}, ready: make(chan struct{}, 1),
		})
		for _, s := range q.segs {
			q.consumers[i].retrying += s.retries[i]
		}
	}
	return nil
}

// missingFrom counts the seqs from floor up to nextSeq that no segment
// holds. Caller owns q (load).
func (q *Queue) missingFrom(floor uint64) uint64 {
	var lost uint64
	at := floor
	for _, s := range q.segs {
		if s.first > at {
			lost += s.first - at
		}
		at = max(at, s.last+1)
	}
	return lost
}

// moveAside renames a segment's files with a .damaged suffix (kept for
// forensics) so its name is free and the healthy segments are served.
func (q *Queue) moveAside(first uint64, cause error) {
	for _, path := range segmentFiles(q.dir, first) {
		if rerr := os.Rename(path, path+".damaged"); rerr != nil && !os.IsNotExist(rerr) {
			q.log.Error("cannot move a damaged segment aside", "file", filepath.Base(path), "err", rerr)
		}
	}
	q.log.Error("segment is damaged; moved aside as .damaged, its messages are not served",
		"segment", segLabel(first), "err", cause)
}

var (
	bucketMeta = []byte("meta")
	keyNextSeq = []byte("next_seq") // the next seq as of the last save: never handed out again
)

// readFloors reads the persisted floors and the next seq as of the last save.
func (q *Queue) readFloors() (map[string]uint64, uint64, error) {
	floors := map[string]uint64{}
	var hwm uint64
	err := q.floorsDB.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketFloors); b != nil {
			b.ForEach(func(k, v []byte) error {
				if len(v) == 8 {
					floors[string(k)] = binary.BigEndian.Uint64(v)
				}
				return nil
			})
		}
		if b := tx.Bucket(bucketMeta); b != nil {
			if v := b.Get(keyNextSeq); len(v) == 8 {
				hwm = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return floors, hwm, err
}

// writeFloors persists floors (every one given) and the next seq.
func (q *Queue) writeFloors(floors map[string]uint64, next uint64) error {
	return q.floorsDB.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketFloors)
		if err != nil {
			return err
		}
		for t, f := range floors {
			if err := b.Put([]byte(t), seqKey(f)); err != nil {
				return err
			}
		}
		m, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return m.Put(keyNextSeq, seqKey(next))
	})
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.name }

// Appended returns the seq of the last message appended (Stats().Appended),
// without taking the queue's lock: a cheap way to tell whether anything was
// appended since an earlier call.
func (q *Queue) Appended() uint64 { return q.appended.Load() }

// Targets returns the target names the queue was opened with.
func (q *Queue) Targets() []string { return append([]string(nil), q.targets...) }

// Append stores m durably and returns its id. With SyncAlways it returns only
// after the record is fsynced. It sets m.Seq and m.ID. On ErrFull, ErrIO,
// ErrClosed or a context error nothing is acknowledged; the message may or
// may not have been written, but a caller that got an error has promised
// nothing to its client.
func (q *Queue) Append(ctx context.Context, m *Message) (ID, error) {
	tag := newTag()
	m.ID = store.NewID(0, tag)
	if m.EnqueuedAt.IsZero() {
		m.EnqueuedAt = q.cfg.Now()
	}
	id, err := q.appendRecord(ctx, tag, EncodeRecord(nil, m))
	if err == nil {
		m.Seq, m.ID = id.Seq(), id
	}
	return id, err
}

// AppendDraft is Append for a Draft: the record is encoded into d's own
// buffer, with no intermediate strings. d may be reused once it returns.
func (q *Queue) AppendDraft(ctx context.Context, d *Draft) (ID, error) {
	a := getAppend()
	id, ok, err := q.draftAppend(d, a, newTag())
	if !ok {
		putAppend(a)
		return id, err
	}
	if err := q.do(ctx, a); err != nil {
		return ID{}, err
	}
	if a.mismatch {
		putAppend(a)
		return ID{}, ErrKeyMismatch
	}
	id = store.NewID(a.seq, a.tag)
	d.Duplicate = a.dup
	putAppend(a)
	return id, nil
}

// AppendDrafts is AppendDraft for many drafts, all or nothing: up to
// maxBatch drafts are appended in one commit (one write, one fsync), so they
// are stored together or refused together; more than that go in chunks of
// maxBatch, each all or nothing. ids[i] and errs[i] are AppendDraft's for
// ds[i]. The drafts must stay valid until it returns.
func (q *Queue) AppendDrafts(ctx context.Context, ds []*Draft) ([]ID, []error) {
	ids := make([]ID, len(ds))
	errs := make([]error, len(ds))
	for from := 0; from < len(ds); from += maxBatch {
		to := min(len(ds), from+maxBatch)
		q.appendChunk(ctx, ds[from:to], ids[from:to], errs[from:to])
	}
	return ids, errs
}

// chunk is what appendChunk needs for up to maxBatch drafts, pooled as a
// whole: one pool round trip and one read of random bytes for the tags of
// a chunk, not one of each per draft (they were ~5% of the CPU of
// bench/logs' split ingest).
type chunk struct {
	apps  []appendChange
	parts []*appendChange
	at    []int // parts[k] is for ds[at[k]]
	tags  []byte
	many  appendManyChange
}

var chunkPool = sync.Pool{New: func() any { return &chunk{many: appendManyChange{waiter: waiter{done: make(chan struct{}, 1)}}} }}

// appendChunk appends ds (at most maxBatch) in one commit.
func (q *Queue) appendChunk(ctx context.Context, ds []*Draft, ids []ID, errs []error) {
	c := chunkPool.Get().(*chunk)
	if cap(c.apps) < len(ds) {
		c.apps = make([]appendChange, len(ds))
		c.tags = make([]byte, 8*len(ds))
	}
	apps, tags := c.apps[:len(ds)], c.tags[:8*len(ds)]
	store.NewTags(tags)
	parts, at := c.parts[:0], c.at[:0]
	for i, d := range ds {
		a := &apps[i]
		id, ok, err := q.draftAppend(d, a, [8]byte(tags[8*i:]))
		if !ok {
			ids[i], errs[i] = id, err
			continue
		}
		parts = append(parts, a)
		at = append(at, i)
	}
	if len(parts) > 0 {
		many := &c.many
		many.err, many.parts = nil, parts
		err := q.do(ctx, many)
		many.parts = nil
		for k, r := range parts {
			i := at[k]
			switch {
			case err != nil:
				errs[i] = err
			case r.mismatch:
				errs[i] = ErrKeyMismatch
			default:
				ids[i] = store.NewID(r.seq, r.tag)
				ds[i].Duplicate = r.dup
			}
		}
	}
	// The writer is done with the parts and c.many (do returned, or they
	// were never handed over): nothing of these drafts outlives them in
	// the pool.
	clear(apps)
	clear(parts)
	c.parts, c.at = parts[:0], at[:0]
	if cap(c.apps) <= maxBatch {
		chunkPool.Put(c)
	}
}

// draftAppend encodes d with the id tag tag into a, and reports whether a
// is to be handed to the writer: a key already stored (or another
// request's) makes none, and returns the first message's id (d.Duplicate
// set) or ErrKeyMismatch.
func (q *Queue) draftAppend(d *Draft, a *appendChange, tag [8]byte) (ID, bool, error) {
	d.Duplicate = false
	var key [16]byte
	hasKey := len(d.IdempotencyKey) > 0
	var checkedBelow uint64
	var fp [16]byte
	if hasKey {
		key = keyHash(d.IdempotencyKey)
		fp = d.Fingerprint()
		id, stored, below, found := q.findKey(key)
		if found {
			if !sameRequest(stored, fp) {
				return ID{}, false, ErrKeyMismatch
			}
			d.Duplicate = true
			return id, false, nil
		}
		checkedBelow = below
	}
	if d.EnqueuedAt.IsZero() {
		d.EnqueuedAt = q.cfg.Now()
	}
	rec := d.Encode(tag)
	if len(rec) > MaxRecordBytes {
		return ID{}, false, ErrTooLarge
	}
	a.rec, a.tag = rec, tag
	a.key, a.hasKey, a.checkedBelow, a.fp = key, hasKey, checkedBelow, fp
	return ID{}, true, nil
}

func (q *Queue) appendRecord(ctx context.Context, tag [8]byte, rec []byte) (ID, error) {
	if len(rec) > MaxRecordBytes {
		return ID{}, ErrTooLarge
	}
	a := getAppend()
	a.rec, a.tag = rec, tag
	err := q.do(ctx, a)
	if err != nil {
		return ID{}, err
	}
	id := store.NewID(a.seq, tag)
	putAppend(a)
	return id, nil
}

// do hands ch to the writer and waits for its answer.
func (q *Queue) do(ctx context.Context, ch change) error {
	if err := q.hand(ctx, ch); err != nil {
		return err
	}
	w := ch.reply()
	<-w.done // hand guarantees an answer, even across Close
	return w.err
}

// handPause, when set (by tests only), is called by hand between its check
// for Close and its send: the window a racing Close must not lose r in.
var handPause func()

// hand gives ch to the writer. It returns ErrClosed once Close has begun, or
// ctx's error if the writer is too far behind to take ch before ctx ends; then
// ch was not handed over. A change it hands over is always answered (done):
// the writer stops only once no hand-off is under way and it has committed
// everything handed over (see writer, closing).
//
// The hot path is one atomic add, one load and one channel send: a select
// over the shared closing and ctx.Done channels as well would lock them, and
// park every waiter on them, on each of hundreds of concurrent requests.
func (q *Queue) hand(ctx context.Context, r change) error {
	q.senders.Add(1)
	defer q.senders.Add(-1)
	if q.closed.Load() {
		return ErrClosed
	}
	if handPause != nil {
		handPause()
	}
	select {
	case q.reqs <- r:
		return nil
	default:
	}
	select {
	case q.reqs <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the writer after it has committed every change already handed
// to it, persists the consumer floors, syncs and closes the files. It returns
// what the final sync and the closes failed to do (nil when all went well).
func (q *Queue) Close() error {
	q.once.Do(func() {
		q.closed.Store(true) // before closing: a hand-off that misses it is waited for
		close(q.closing)
	})
	<-q.stopped
	return q.closeErr
}

// writer is the one goroutine that writes the queue's files.
func (q *Queue) writer() {
	defer close(q.stopped)
	var syncTick <-chan time.Time
	if q.cfg.Sync == SyncInterval || q.cfg.Sync == SyncNever {
		t := time.NewTicker(q.cfg.SyncInterval)
		defer t.Stop()
		syncTick = t.C
	}
	cursorTick := time.NewTicker(q.cfg.CursorInterval)
	defer cursorTick.Stop()
	retentionTick := time.NewTicker(time.Second)
	defer retentionTick.Stop()
	jsync := time.NewTimer(time.Hour) // SyncAlways: the journal's deferred fsync (outcomeSyncMax)
	jsync.Stop()
	defer jsync.Stop()
	jsyncArmed := false

	dirty := map[*segment]bool{} // written since the last sync (SyncInterval)
	ticks := 0
	batch := make([]change, 0, maxBatch)
	for {
		select {
		case r := <-q.reqs:
			batch = append(batch[:0], r)
			// The sender that woke us made us its next goroutine to run,
			// ahead of the other callers about to hand over theirs: yield
			// once so that they can, and this commit takes them too. Under
			// load that is ~5x fewer commits per request (their fixed cost
			// dominates with SyncNever); idle, Gosched returns at once.
			runtime.Gosched()
			batch = q.gather(batch)
			t0 := time.Now()
			q.commit(batch, dirty)
			q.commitNanos.Add(uint64(time.Since(t0)))
			q.commits.Add(1)
			q.committed.Add(uint64(len(batch)))
			clear(batch)
			if !jsyncArmed && q.journalSyncDue() {
				jsync.Reset(outcomeSyncMax)
				jsyncArmed = true
			}
		case <-jsync.C:
			jsyncArmed = false
			q.syncJournal()
		case <-syncTick:
			if q.cfg.Sync == SyncNever {
				q.startWriteback(dirty)
				continue
			}
			q.syncDirty(dirty)
			q.syncJournal()
		case <-cursorTick.C:
			if q.cfg.Sync == SyncAlways {
				// A saved floor must not pass an outcome that is not durable.
				q.syncJournal()
			}
			q.saveFloors()
		case <-retentionTick.C:
			q.checkpoint()
			q.rollByAge(dirty)
			q.enforceRetention(dirty)
			q.pruneTombstones()
			if ticks++; ticks%10 == 0 {
				q.dropMappings()
			}
		case <-q.closing:
			// Commit everything handed over. closed is set, so no hand-off
			// begins now; one under way (blocked on a full channel, say) is
			// let in until none is left, and what it sent is committed too.
			for {
				q.commitQueued(dirty)
				if q.senders.Load() == 0 {
					q.commitQueued(dirty)
					break
				}
				runtime.Gosched()
			}
			err := q.syncDirty(dirty)
			q.syncJournal()
			q.checkpoint()
			q.saveFloors()
			q.closeErr = errors.Join(err, q.closeFiles())
			if ws := q.WriterStats(); ws.Commits > 0 {
				q.log.Info("writer stopped", "commits", ws.Commits,
					"requests_per_commit", fmt.Sprintf("%.1f", float64(ws.Requests)/float64(ws.Commits)),
					"avg_commit", (ws.Time / time.Duration(ws.Commits)).Round(time.Microsecond),
					"failed_commits", ws.FailedCommits, "refused", ws.Refused)
			}
			return
		}
	}
}

// gather appends to batch the changes waiting in reqs, up to maxBatch.
func (q *Queue) gather(batch []change) []change {
	for len(batch) < maxBatch {
		select {
		case r := <-q.reqs:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// commitQueued commits, one by one, every change waiting in reqs.
func (q *Queue) commitQueued(dirty map[*segment]bool) {
	for {
		select {
		case r := <-q.reqs:
			q.commit([]change{r}, dirty)
		default:
			return
		}
	}
}

func (q *Queue) syncDirty(dirty map[*segment]bool) error {
	var errs []error
	for s := range dirty {
		if err := q.fsync(s.log.f); err != nil {
			q.log.Error("fsync failed", "file", logName(s.first), "err", err)
			errs = append(errs, fmt.Errorf("%w: fsync %s: %w", ErrIO, logName(s.first), err))
		}
		if err := s.db.Sync(); err != nil {
			q.log.Error("fsync failed", "file", segmentName(s.first), "err", err)
			errs = append(errs, fmt.Errorf("%w: fsync %s: %w", ErrIO, segmentName(s.first), err))
		}
		delete(dirty, s)
	}
	return errors.Join(errs...)
}

// startWriteback, with SyncNever, has the kernel start writing what the
// logs got since the last call, without waiting for it (sync_file_range):
// no fsync and no durability point, as SyncNever promises, but the dirty
// pages no longer pile up until the kernel's own flush. Piled up they made
// the ack p99 39.8 ms at 256 clients, against 11.5 ms with this
// (bench/journal/2026-12-01-to-05.md, fourth set, "fsync: never p99 was the dirty pages").
// dirty keeps its segments: Close still fsyncs them all.
func (q *Queue) startWriteback(dirty map[*segment]bool) {
	for s := range dirty {
		l := s.log
		if l.end <= l.wb {
			continue
		}
		if err := startWriteback(l.f, l.wb, l.end-l.wb); err != nil {
			q.wbFail.failed(q.log, "starting the writeback of a segment log failed", err, 0)
			continue
		}
		q.wbFail.recovered(q.log, "starting the writeback of segment logs works again")
		l.wb = l.end
		q.writebacks.Add(1)
	}
}

// closeFiles closes every file of the queue and returns what failed.
func (q *Queue) closeFiles() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var errs []error
	for _, s := range q.segs {
		if err := s.close(); err != nil {
			q.log.Error("close segment", "segment", segLabel(s.first), "err", err)
			errs = append(errs, fmt.Errorf("close %s: %w", segLabel(s.first), err))
		}
	}
	q.segs = nil
	if q.floorsDB != nil {
		if err := q.floorsDB.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close cursors.db: %w", err))
		}
	}
	if q.jrn != nil && q.jrn.f != nil {
		if err := q.jrn.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", journalName(q.jrn.gen), err))
		}
	}
	return errors.Join(errs...)
}

// appendBatch writes the appends of one commit to the head's log as frames,
// with one write and, with SyncAlways, one fdatasync; seqs from first on.
// Only then are the messages indexed and visible. A failed write is cut off
// again, so no frame of a refused request can come back at a restart.
func (q *Queue) appendBatch(head *segment, first uint64, apps []*appendChange, dirty map[*segment]bool) error {
	l := head.log
	next := first
	need := 0
	for _, r := range apps {
		need += frameHeader + len(r.rec)
	}
	// One allocation at most, not a doubling per commit larger than
	// any before it (each copying the frames so far).
	buf := slices.Grow(q.wbuf[:0], need+pageSize)
	locs := slices.Grow(q.wlocs[:0], len(apps))
	var inBatch map[[16]byte]*appendChange
	for _, r := range apps {
		r.dup, r.mismatch = false, false
		if r.hasKey {
			if inBatch == nil {
				inBatch = map[[16]byte]*appendChange{}
			}
			if prev := inBatch[r.key]; prev != nil {
				r.repeats(keyTarget{seq: prev.seq, tag: prev.tag, fp: prev.fp})
				continue
			}
			if t, ok := l.keys[r.key]; ok {
				r.repeats(t)
				continue
			}
			if t, ok := q.findKeyFrom(r.checkedBelow, head, r.key); ok {
				r.repeats(t)
				continue
			}
			inBatch[r.key] = r
		}
		r.seq = next
		next++
		locs = append(locs, recLoc{off: uint64(l.end) + uint64(len(buf)), n: uint32(len(r.rec))})
		buf = appendFrame(buf, r.seq, r.rec)
	}
	n := len(buf) // the frames; out may add padding after them
	out := l.padWrite(buf)
	if cap(out) <= 8<<20 { // keep the buffers (with room for the padding) unless one huge batch grew them
		q.wbuf, q.wlocs = out[:0], locs[:0]
	} else {
		q.wbuf, q.wlocs = nil, nil
	}
	if len(locs) == 0 {
		return nil // all duplicates
	}
	var err error
	if max := int64(q.cfg.maxFileBytes); max > 0 && l.end+int64(n) > max {
		err = fmt.Errorf("write %s: %w (test limit of %d bytes)", l.path, syscall.ENOSPC, max)
	} else {
		_, err = l.f.WriteAt(out, l.end)
	}
	if err == nil && q.cfg.Sync == SyncAlways {
		err = q.fsync(l.f)
	}
	if err != nil {
		l.f.Truncate(l.end) // best effort; a restart cuts off a torn frame anyway
		l.recycled = 0      // the old frames are gone with the truncation: nothing to pad over
		return err
	}
	l.end += int64(n)
	for _, r := range apps {
		if r.hasKey && !r.dup {
			l.keys[r.key] = keyTarget{seq: r.seq, tag: r.tag, fp: r.fp}
		}
	}
	l.appendLocs(locs)
	now := q.cfg.Now()
	q.mu.Lock()
	for _, r := range apps {
		if r.fwd && !r.dup {
			q.markForwarded(r.seq)
		}
	}
	q.nextSeq = next
	q.appended.Store(next - 1)
	head.last = next - 1
	head.lastAppend = now
	size := head.dbSize + l.end
	q.bytes.Add(size - head.size)
	head.size = size
	q.mu.Unlock()
	dirty[head] = true
	return nil
}

// dropMappings releases the mapped pages of every segment (see dropMapped):
// what appends and readers touched comes back from the page cache on demand.
func (q *Queue) dropMappings() {
	q.mu.Lock()
	segs := append([]*segment(nil), q.segs...)
	q.mu.Unlock()
	for _, s := range segs {
		dropMapped(s.db, s.dbSize)
	}
}

// rollByAge rolls a non-empty head older than SegmentAge.
func (q *Queue) rollByAge(dirty map[*segment]bool) {
	q.mu.Lock()
	head := q.segs[len(q.segs)-1]
	old := head.last >= head.first && q.cfg.Now().Sub(head.opened) >= q.cfg.SegmentAge
	q.mu.Unlock()
	if old {
		q.roll(dirty)
	}
}

// roll starts a new head segment and seals the old one.
func (q *Queue) roll(dirty map[*segment]bool) {
	q.syncDirty(dirty) // the old head is complete and durable before the new one exists
	q.mu.Lock()
	first := q.nextSeq
	old := q.segs[len(q.segs)-1]
	q.mu.Unlock()
	seg, err := createSegment(q.dir, first, q.targets, q.cfg)
	if err == nil {
		if err = old.seal(q.dir); err != nil {
			seg.close()
			removeSegmentFiles(q.dir, first)
		}
	}
	if err != nil {
		// Tried again after every commit while it fails (a full disk).
		q.rollFails.failed(q.log, "segment roll failed; the head keeps growing", err, 0)
		return
	}
	q.rollFails.recovered(q.log, "segment roll succeeds again")
	q.mu.Lock()
	q.segs = append(q.segs, seg)
	q.mu.Unlock()
	q.bytes.Add(seg.size)
	q.log.Info("segment rolled", "segment", segLabel(first), "on_spare_log", seg.log.recycled > 0)
}

// segmentFor returns the segment holding seq, or nil. Caller holds q.mu.
func (q *Queue) segmentFor(seq uint64) *segment {
	i := sort.Search(len(q.segs), func(i int) bool { return q.segs[i].first > seq }) - 1
	if i < 0 {
		return nil
	}
	s := q.segs[i]
	if seq > s.last && s != q.segs[len(q.segs)-1] {
		return nil
	}
	return s
}

// saveFloors persists every consumer's floor that moved.
func (q *Queue) saveFloors() {
	q.mu.Lock()
	q.trackRates(time.Now())
	type fl struct {
		c     *Consumer
		floor uint64
	}
	var moved []fl
	for _, c := range q.consumers {
		if f := c.floorLocked(); f != c.saved {
			moved = append(moved, fl{c, f})
		}
	}
	next := q.nextSeq
	q.mu.Unlock()
	if len(moved) == 0 && next == q.savedNext {
		return
	}
	err := q.floorsDB.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFloors)
		for _, m := range moved {
			if err := b.Put([]byte(m.c.target), seqKey(m.floor)); err != nil {
				return err
			}
		}
		mb, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return mb.Put(keyNextSeq, seqKey(next))
	})
	if err != nil {
		q.log.Error("saving cursors failed; will retry", "err", err)
		return
	}
	q.mu.Lock()
	for _, m := range moved {
		m.c.saved = m.floor
	}
	q.mu.Unlock()
	q.savedNext = next
}

// enforceRetention deletes segments older than the retention, oldest first.
// A segment whose messages some target has not finished is expired anyway
// (retention is the data's lifetime); what was lost is counted and logged.
func (q *Queue) enforceRetention(dirty map[*segment]bool) {
	now := q.cfg.Now()
	for {
		q.mu.Lock()
		if len(q.segs) < 2 {
			q.mu.Unlock()
			return
		}
		s := q.segs[0]
		early := false
		if now.Sub(s.lastAppend) < q.cfg.Retention {
			// Under admission pressure a segment every target has finished
			// goes early: space for new messages beats status lookups of
			// delivered ones.
			if !q.finishedLocked(s) || q.store.full() == "" {
				q.mu.Unlock()
				return
			}
			early = true
		}
		busy := false
		for _, c := range q.consumers {
			for seq := range c.inflight {
				if seq <= s.last {
					busy = true
				}
			}
		}
		if busy { // wait for outcomes in flight on it
			q.mu.Unlock()
			return
		}
		if q.pending.inSegment(s) > 0 {
			// It goes, but its delivered outcomes go to bbolt first: the
			// count of what expires undelivered (and its tombstones)
			// reads them there. Checked only now, so that a pass that
			// deletes nothing (admission pressure asks every 50ms) never
			// checkpoints; after the checkpoint all is looked at again,
			// since Fetch may have claimed some of s meanwhile.
			q.mu.Unlock()
			q.checkpoint()
			q.mu.Lock()
			left := q.pending.inSegment(s)
			q.mu.Unlock()
			if left > 0 {
				return // the checkpoint failed; the next pass tries again
			}
			continue
		}
		floors := make([]uint64, len(q.consumers))
		for i, c := range q.consumers {
			floors[i] = c.next
		}
		q.mu.Unlock()

		unfinished := q.expireSegment(s, floors) // and records their tombstones (tombstone.go)
		q.mu.Lock()
		q.segs = q.segs[1:]
		for i, c := range q.consumers {
			c.retrying -= s.retries[i]
		}
		for _, c := range q.consumers {
			if c.next <= s.last {
				c.next = s.last + 1
			}
		}
		var undelivered uint64
		for i, n := range unfinished {
			q.consumers[i].expired += n
			undelivered += n
		}
		q.expired += undelivered
		q.mu.Unlock()
		q.bytes.Add(-s.size)
		delete(dirty, s)
		s.close()
		if err := retireSegmentFiles(q.dir, s.first, q.spareBound(s)); err != nil {
			q.log.Error("delete segment", "segment", segLabel(s.first), "err", err)
		}
		if early {
			q.log.Warn("storage full: deleted a finished segment before its retention; status lookups of its messages end",
				"segment", segLabel(s.first))
		} else if undelivered > 0 {
			q.log.Warn("retention expired undelivered messages", "segment", segLabel(s.first), "undelivered", undelivered)
		} else {
			q.log.Info("segment deleted after retention", "segment", segLabel(s.first))
		}
	}
}

// spareBound says whether the log of s, being deleted, is kept as a spare
// (see takeSpare): its bound, or 0 to delete it. Spares are kept up to
// maxSpares, and only while the free-disk floor is not near.
func (q *Queue) spareBound(s *segment) uint64 {
	if q.cfg.noSpares || s.log == nil || s.log.end == 0 {
		return 0
	}
	if paths, _ := spares(q.dir); len(paths) >= maxSpares {
		return 0
	}
	if min := q.cfg.MinFreeBytes; min > 0 && q.store.free() < min+2*q.cfg.SegmentBytes {
		return 0
	}
	return s.last + 1
}

// complete hands an outcome to the writer; wait says whether to wait for it.
func (q *Queue) complete(ctx context.Context, r change, wait bool) error {
	if !wait {
		return q.hand(context.Background(), r)
	}
	return q.do(ctx, r)
}

// finishedLocked reports whether every target is done with s: its floor is
// past s and none of s's messages waits in a retry schedule. Caller holds q.mu.
func (q *Queue) finishedLocked(s *segment) bool {
	for i, c := range q.consumers {
		if c.floorLocked() <= s.last || s.retries[i] > 0 || s.parked[i] > 0 {
			return false
		}
	}
	return true
}

// trackRates updates each consumer's finish rate (an EWMA of floor advance
// per second), which estimates when space will free. Caller holds q.mu.
func (q *Queue) trackRates(now time.Time) {
	for _, c := range q.consumers {
		f := c.floorLocked()
		if !c.rateAt.IsZero() {
			if dt := now.Sub(c.rateAt).Seconds(); dt > 0 {
				// An average that follows a change within a few samples
				// (CursorInterval apart), and starts from the first one:
				// starting from 0 it said 11s where space came back in
				// 0.5s after a start or an idle spell.
				inst := float64(f-min(f, c.rateFloor)) / dt
				if c.rate < 0.01 {
					c.rate = inst
				} else {
					c.rate = 0.5*c.rate + 0.5*inst
				}
			}
		}
		c.rateAt, c.rateFloor = now, f
	}
}

// retryAfter estimates when the oldest segment will be finished by every
// target (and so can be deleted under pressure), from the finish rates.
// ok is false when no target is making progress.
func (q *Queue) retryAfter() (time.Duration, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.segs) < 2 {
		return 0, false
	}
	s := q.segs[0]
	var worst time.Duration
	for _, c := range q.consumers {
		f := c.floorLocked()
		if f > s.last {
			continue
		}
		if c.rate < 0.01 {
			return 0, false
		}
		if d := time.Duration(float64(s.last+1-f) / c.rate * float64(time.Second)); d > worst {
			worst = d
		}
	}
	return worst, true
}

// failureLog logs a failure that may repeat after every commit (a full disk)
// without flooding: the first one at once, then at most one line a second
// with the failures and requests since the last line, and one line when it
// stops failing with what was not logged yet. Writer only.
type failureLog struct {
	last            time.Time
	failures, items int // since the last line
	failing         bool
}

func (f *failureLog) failed(log *slog.Logger, msg string, err error, items int) {
	f.failing = true
	f.failures++
	f.items += items
	if time.Since(f.last) < time.Second {
		return
	}
	args := []any{"err", err, "failures", f.failures}
	if f.items > 0 {
		args = append(args, "requests", f.items)
	}
	log.Error(msg, args...)
	f.last, f.failures, f.items = time.Now(), 0, 0
}

// recovered is rate-limited like failed, so that a disk flapping between
// full and not gets at most one line a second; counts not logged here go
// into the next line.
func (f *failureLog) recovered(log *slog.Logger, msg string) {
	if !f.failing {
		return
	}
	f.failing = false
	if time.Since(f.last) < time.Second {
		return
	}
	args := []any{"unlogged_failures", f.failures}
	if f.items > 0 {
		args = append(args, "unlogged_requests", f.items)
	}
	log.Info(msg, args...)
	f.last, f.failures, f.items = time.Now(), 0, 0
}
