package jetstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultHandoverQuiet is how long a node that gained a lease from another
// (or from nobody) waits before handing out messages: one second, the
// window of a target's rate.
const DefaultHandoverQuiet = time.Second

// Lease is one node's claim on a key of the lease bucket, whose entries
// expire after the bucket's TTL unless renewed. It is acquired with
// create-if-absent, renewed with a compare-and-set on its revision at 75%
// of the TTL, and dropped when a renewal fails. Locally it counts as held
// until 90% of the TTL after the request that wrote it was sent, so that the
// holder stops before the entry can expire on the server and another node
// can take it (clocks are assumed to run at the same rate, not to agree).
type Lease struct {
	kv   jetstream.KeyValue
	key  string
	node string
	ttl  time.Duration
	// quiet is the hand-over wait (see DefaultHandoverQuiet).
	quiet time.Duration

	mu         sync.Mutex
	rev        uint64    // revision of our entry; 0 = not held
	sent       time.Time // when the request that wrote rev was sent
	gen        uint64    // acquisitions so far
	reported   bool      // the last state told to changed
	quietUntil time.Time // a new holder hands out nothing before
	changed    func(held bool)

	stop chan struct{}
	done chan struct{}
}

// NewLease returns a lease on key in kv (a bucket whose TTL is ttl) for
// node. changed, if not nil, is called (from the lease's goroutine) when
// the lease is gained or lost. quiet is the hand-over wait after a gain. Start tries once and starts the renewals.
func NewLease(kv jetstream.KeyValue, key, node string, ttl, quiet time.Duration, changed func(held bool)) *Lease {
	return &Lease{kv: kv, key: key, node: node, ttl: ttl, quiet: quiet, changed: changed, stop: make(chan struct{}), done: make(chan struct{})}
}

// Start tries to acquire the lease once, then keeps acquiring or renewing
// it until Stop.
func (l *Lease) Start() {
	l.step()
	go l.loop()
}

// Held reports whether the lease is held now, and the acquisition it
// belongs to.
func (l *Lease) Held() (bool, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heldLocked(time.Now()), l.gen
}

// Active reports whether the lease is held and past its hand-over quiet
// second: whether messages may be handed out now.
func (l *Lease) Active() (bool, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	return l.heldLocked(now) && !now.Before(l.quietUntil), l.gen
}

func (l *Lease) heldLocked(now time.Time) bool {
	return l.rev != 0 && now.Before(l.sent.Add(l.ttl*9/10))
}

func (l *Lease) loop() {
	defer close(l.done)
	t := time.NewTicker(max(l.ttl/10, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.step()
		}
	}
}

// step renews a held lease that is at 75% of its TTL, or tries to acquire
// one not held.
func (l *Lease) step() {
	now := time.Now()
	l.mu.Lock()
	rev, sent, held := l.rev, l.sent, l.heldLocked(now)
	l.mu.Unlock()
	if held && now.Before(sent.Add(l.ttl*3/4)) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(l.ttl/8, 50*time.Millisecond))
	defer cancel()
	var newRev uint64
	var err error
	reclaimed := false
	if held {
		newRev, err = l.kv.Update(ctx, l.key, []byte(l.node), rev)
	} else {
		newRev, err = l.kv.Create(ctx, l.key, []byte(l.node))
		if errors.Is(err, jetstream.ErrKeyExists) {
			// Ours from an earlier life of this node (same name): take it
			// back at once instead of waiting for it to expire.
			if e, gerr := l.kv.Get(ctx, l.key); gerr == nil && string(e.Value()) == l.node {
				newRev, err = l.kv.Update(ctx, l.key, []byte(l.node), e.Revision())
				reclaimed = err == nil
			}
		}
	}
	l.mu.Lock()
	gained := false
	if err != nil {
		l.rev = 0 // a failed renewal drops the lease; a failed create changes nothing
	} else {
		l.rev, l.sent = newRev, now
		if !held {
			// A new holder keeps quiet for one second, so that no second
			// holds sends of two holders (the old one's last at its rate,
			// the new one's full bucket); this lease's own drop and reclaim
			// (a failed renewal, the same limiter after it) needs none.
			if !reclaimed || l.gen == 0 {
				l.quietUntil = now.Add(l.quiet)
			}
			l.gen++
			gained = true
		}
	}
	is := l.heldLocked(time.Now())
	report := l.changed != nil && (gained || is != l.reported)
	l.reported = is
	l.mu.Unlock()
	if report {
		l.changed(is)
	}
}

// Stop stops renewing and, if the lease is held, deletes it so that
// another node can take it at once.
func (l *Lease) Stop() {
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	select {
	case <-l.done:
	case <-time.After(l.ttl):
	}
	l.mu.Lock()
	rev := l.rev
	l.rev = 0
	l.mu.Unlock()
	if rev != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev)) // an error: lost meanwhile, or it expires
	}
}
