package buffer

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"
)

// SyncMode says when an append is acknowledged relative to fsync.
type SyncMode int

const (
	// SyncAlways acknowledges only after fsync: nothing acknowledged is lost on
	// kill -9 or power loss.
	SyncAlways SyncMode = iota
	// SyncInterval acknowledges after the write and fsyncs every SyncInterval.
	// kill -9 loses nothing; a power loss may lose the last interval.
	SyncInterval
	// SyncNever acknowledges after the write and never fsyncs on the way
	// to an acknowledgement: every SyncInterval the writer only starts the
	// kernel's writeback of new log data (sync_file_range, no wait). Rolls,
	// seals, checkpoints and Close still fsync what they finish, so a
	// sealed segment is whole after a power loss; the head may not be.
	SyncNever
)

// Config configures a Store. The zero value of every field but Dir is usable.
type Config struct {
	Dir          string        // data directory; created if missing
	Sync         SyncMode      // default SyncAlways
	SyncInterval time.Duration // for SyncInterval (and SyncNever's writeback starts); default 10ms
	SegmentBytes int64         // roll the head segment past this size; default 64 MiB, at least 64 KiB
	Retention    time.Duration // segments older than this are deleted; default 72h
	// SegmentAge rolls a non-empty head after this long, so that data is
	// deleted at a grain finer than the retention even at low traffic;
	// default Retention/24.
	SegmentAge time.Duration
	// MaxBytes refuses appends (ErrFull) once the segments hold this much data; 0 = no limit.
	MaxBytes int64
	// MinFreeBytes refuses appends (ErrFull) while the file system has less free; 0 = off.
	MinFreeBytes int64
	// CursorInterval is how often consumer floors are persisted; default 200ms.
	CursorInterval time.Duration
	Logger         *slog.Logger // default slog.Default()
	// ObserveSync, if set, is told how long each fdatasync of a log or an
	// outcome journal took (the metrics' fsync latency histogram). It runs
	// on the writer's path: it must be quick and must not block.
	ObserveSync func(time.Duration)
	Now         func() time.Time // clock; default time.Now

	noSpares     bool // tests and benchmarks: delete logs instead of keeping spares (see takeSpare)
	maxFileBytes int  // tests: a size limit on each segment's log and bbolt file, to inject a write failure like ENOSPC
}

func (c *Config) setDefaults() {
	if c.SyncInterval <= 0 {
		c.SyncInterval = 10 * time.Millisecond
	}
	if c.SegmentBytes <= 0 {
		c.SegmentBytes = 64 << 20
	}
	if c.SegmentBytes < 64<<10 {
		c.SegmentBytes = 64 << 10 // below this bbolt's own overhead would roll every commit
	}
	if c.Retention <= 0 {
		c.Retention = 72 * time.Hour
	}
	if c.SegmentAge <= 0 {
		c.SegmentAge = c.Retention / 24
	}
	if c.CursorInterval <= 0 {
		c.CursorInterval = 200 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Store is a data directory holding one Queue per route.
type Store struct {
	cfg Config

	mu     sync.Mutex
	queues map[string]*Queue
	closed bool

	freeMu    sync.Mutex
	freeAt    time.Time
	freeBytes int64
}

// Open opens (or creates) the data directory described by cfg.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("buffer: Config.Dir is empty")
	}
	cfg.setDefaults()
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "queues"), 0o755); err != nil {
		return nil, fmt.Errorf("buffer: create data directory: %w", err)
	}
	if cfg.MinFreeBytes > 0 {
		// A free-disk floor that cannot be read would refuse every append.
		if _, err := diskFree(cfg.Dir); err != nil {
			return nil, fmt.Errorf("buffer: a free-disk floor (MinFreeBytes, storage.min_free_bytes) is set, but the free space of %s cannot be read: %w", cfg.Dir, err)
		}
	}
	return &Store{cfg: cfg, queues: make(map[string]*Queue)}, nil
}

var queueName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Queue opens the named queue, creating it on first use, with one consumer
// per target. Opening the same name twice returns the same Queue. A target
// that is new to an existing queue starts at its end: it receives messages
// appended from now on.
func (s *Store) Queue(name string, targets []string) (*Queue, error) {
	if !queueName.MatchString(name) {
		return nil, fmt.Errorf("buffer: invalid queue name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if q, ok := s.queues[name]; ok {
		return q, nil
	}
	q, err := openQueue(s, name, targets)
	if err != nil {
		return nil, fmt.Errorf("queue %q: %w", name, err)
	}
	s.queues[name] = q
	return q, nil
}

// Queues returns the open queues.
func (s *Store) Queues() []*Queue {
	s.mu.Lock()
	defer s.mu.Unlock()
	qs := make([]*Queue, 0, len(s.queues))
	for _, q := range s.queues {
		qs = append(qs, q)
	}
	return qs
}

// Bytes returns the bytes of data in all segments (what MaxBytes limits).
func (s *Store) Bytes() int64 {
	var n int64
	for _, q := range s.Queues() {
		n += q.bytes.Load()
	}
	return n
}

// admit returns a *FullError when admission control refuses new messages.
func (s *Store) admit() error {
	reason := s.full()
	if reason == "" {
		return nil
	}
	return &FullError{Reason: reason, RetryAfter: s.retryAfter()}
}

// full says why admission control refuses new messages, or "". It takes no
// queue lock.
func (s *Store) full() string {
	reason := ""
	if s.cfg.MaxBytes > 0 {
		if n := s.Bytes(); n >= s.cfg.MaxBytes {
			reason = fmt.Sprintf("%d bytes stored, max_bytes is %d", n, s.cfg.MaxBytes)
		}
	}
	if reason == "" && s.cfg.MinFreeBytes > 0 {
		if free := s.free(); free < s.cfg.MinFreeBytes {
			reason = fmt.Sprintf("%d bytes free on disk, min_free_bytes is %d", free, s.cfg.MinFreeBytes)
		}
	}
	return reason
}

func (s *Store) retryAfter() time.Duration {
	best, found := time.Duration(0), false
	for _, q := range s.Queues() {
		if d, ok := q.retryAfter(); ok && (!found || d < best) {
			best, found = d, true
		}
	}
	if !found {
		return 30 * time.Second
	}
	return min(max(best, time.Second), time.Hour)
}

// free returns the free bytes of the data directory's file system, asking
// the kernel at most every 250ms.
func (s *Store) free() int64 {
	s.freeMu.Lock()
	defer s.freeMu.Unlock()
	if now := time.Now(); now.Sub(s.freeAt) > 250*time.Millisecond {
		if free, err := diskFree(s.cfg.Dir); err == nil {
			s.freeBytes = free
		}
		s.freeAt = now
	}
	return s.freeBytes
}

// Close closes every queue: pending requests are committed and synced first.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	qs := s.queues
	s.queues = map[string]*Queue{}
	s.mu.Unlock()
	var errs []error
	for _, q := range qs {
		errs = append(errs, q.Close())
	}
	return errors.Join(errs...)
}
