package drain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// Per-key ordering (Target.Ordering).
//
// Messages with the same key go to the target one at a time, in seq
// (arrival) order; a message without the key is not ordered. Different keys
// go out in parallel, under the target's rate and concurrency as usual.
//
// The run loop keeps, per key, the seq that owns it: the message in flight,
// or waiting in the retry schedule after a failed attempt. A delivery of a
// key owned by another seq is parked in the store (Parker.Park: no attempt
// spent, the cursor moves on, so other keys keep flowing). When the owner
// reaches a final outcome (delivered or dead), the oldest message parked
// under its key is unparked, due at once, and owns the key from that moment,
// so a newer message of the key that arrives meanwhile parks behind it. An
// owner that fails and is rescheduled keeps the key: its key waits for it.
// An owner whose outcome could not be recorded keeps the key until Run
// ends (the store keeps it in flight until then); Run then gives it back
// (Release: nothing was committed, so it is again a first attempt below
// the rewound cursor, or a retry in the schedule) and the next Run, in this
// process or after a restart, finds it as after a crash. Left in flight, a
// next Run in this process would see neither it nor its key's owner.
//
// # After a restart
//
// The owners are in memory only. What the store still tells us: which
// messages are parked, under which key, oldest first (NextParked,
// ParkedKeys); the cursor (Cursor: every message below it has been fetched
// since the store was opened, or has a state); and the retry schedule
// (EachRetry: every message in it, not in flight, with its headers).
//
// At Run start the owners that wait in the retry schedule (a failed owner,
// or a successor unparked just before the stop) are read back from it: a
// key with a message r in the schedule is owned by r if r is surely its
// oldest unfinished message, that is if r is the key's only message in the
// schedule, Cursor() > r (so every older message of the key was fetched
// and has a state: nothing older comes back from being in flight at a
// crash; the cursor restarts at the floor, which never leads) and nothing
// older of the key is parked. Then the drainer is settled at once.
//
// Recovering: if some key's retry is not sure to own it (the policy changed,
// a dead letter was revived, or the crash left an older message of the key
// in flight), every delivery of a key without an owner is parked, nothing is
// unparked, until NextRetry reports nothing pending. Then every retry that
// was scheduled before the restart has been fetched by this run (and, if
// keyed, parked), since nothing keyed is sent meanwhile, no keyed retry is
// added. Unkeyed messages flow normally; their failures prolong this phase
// (conservative). The same happens if the store cannot be read at start.
//
// Settled: the unfinished messages of a key K are now (1) parked, (2) never
// fetched, (3) its owner from the retry schedule, or (4) fetched by this run
// and owned or parked. A delivery q of K without an owner is either a new
// message (cursor order: every message of K below q was fetched before it,
// and is owned, so K would have an owner, or parked) or an unparked one. So
// if NextParked(K) = p < q, p is the oldest unfinished message of K: q parks,
// p is unparked and owns K; otherwise q is the oldest and owns K. A key with
// parked messages and no owner that no delivery comes for (the owner
// finished just before the crash, before its successor was unparked) is
// found with ParkedKeys; its oldest p is unparked only once Cursor() > p: p
// was parked after being fetched, so any older unfinished message of K that
// is not parked has a seq below p and was in flight at the crash, and the
// restarted cursor fetches it before it passes p (a Release rewinds the
// cursor below the released message, so the check stays conservative).

// Parker is what ordering needs from the store beyond Source.
// *store.Consumer implements it.
type Parker interface {
	// Park takes the fetched delivery d out of the flow, under key, until Unpark.
	Park(ctx context.Context, d *store.Delivery, key [16]byte) error
	// NextParked returns the oldest message parked under key.
	NextParked(key [16]byte) (seq uint64, ok bool, err error)
	// ParkedKeys calls fn with every key that has parked messages and its oldest.
	ParkedKeys(fn func(key [16]byte, oldest uint64) bool) error
	// Unpark makes the parked message seq due at at, in the retry schedule.
	Unpark(ctx context.Context, seq uint64, key [16]byte, at time.Time) error
	// UnparkN unparks up to n of the oldest messages parked under key
	// together (they share commits); all: no other was parked.
	UnparkN(ctx context.Context, key [16]byte, n int, at time.Time) (seqs []uint64, all bool, err error)
	// Cursor returns the seq of the next message never fetched.
	Cursor() uint64
	// EachRetry calls fn with every message in the retry schedule, not in flight.
	EachRetry(fn func(m *store.Message, due time.Time) bool) error
}

// headerKey returns the value of the header name (case-insensitive) as a
// key hash, and false if the message has no such header or it is empty.
func headerKey(name string) func(*store.Message) ([16]byte, bool) {
	return func(m *store.Message) ([16]byte, bool) {
		for _, h := range m.Header {
			if strings.EqualFold(h.Name, name) {
				if v := strings.TrimSpace(h.Value); v != "" {
					return store.KeyHash([]byte(v)), true
				}
				return [16]byte{}, false
			}
		}
		return [16]byte{}, false
	}
}

// orderer keeps per-key order for one Run; the run loop owns it.
type orderer struct {
	d   *Drainer
	p   Parker
	key func(*store.Message) ([16]byte, bool)

	active     map[[16]byte]uint64 // key -> the seq that owns it
	recovering bool                // retries of a previous run may still own keys
	orphans    map[[16]byte]uint64 // parked keys without an owner -> their oldest parked seq
	orphanAt   uint64              // Cursor() when orphans were last looked at
	woke       bool                // something was unparked: fetch again
}

func newOrderer(d *Drainer, p Parker) *orderer {
	return &orderer{
		d: d, p: p, key: headerKey(d.target.Ordering.Key.Header),
		active: map[[16]byte]uint64{}, orphans: map[[16]byte]uint64{},
	}
}

// begin is called at Run start: the owners waiting in the retry schedule
// are found there, or, if that cannot be told for sure, the drainer
// recovers (see "After a restart").
func (o *orderer) begin() error {
	owners, sure, err := o.retryOwners()
	if err != nil {
		return err
	}
	if !sure {
		o.recovering = true
		o.d.log.Info("ordering: retries from before the start may precede other messages of their keys; keyed messages without an owner wait (parked) until the retries have been fetched")
		return nil
	}
	for k, seq := range owners {
		o.active[k] = seq
	}
	return o.settle()
}

// retryOwners returns, per key, the message in the retry schedule that owns
// it; sure is false if some key's retry is not surely its oldest unfinished
// message.
func (o *orderer) retryOwners() (owners map[[16]byte]uint64, sure bool, err error) {
	cur := o.p.Cursor()
	owners, sure = map[[16]byte]uint64{}, true
	err = o.p.EachRetry(func(m *store.Message, _ time.Time) bool {
		k, ok := o.key(m)
		if !ok {
			return true
		}
		if _, two := owners[k]; two || m.Seq >= cur {
			sure = false
			return false
		}
		owners[k] = m.Seq
		return true
	})
	if err != nil || !sure {
		return nil, false, err
	}
	for k, seq := range owners {
		p, parked, err := o.p.NextParked(k)
		if err != nil {
			return nil, false, err
		}
		if parked && p < seq {
			return nil, false, nil
		}
	}
	return owners, true, nil
}

// settle ends recovery: every key with parked messages and no owner becomes
// an orphan, unparked once the cursor has passed its oldest.
func (o *orderer) settle() error {
	o.recovering = false
	o.orphanAt = 0
	return o.p.ParkedKeys(func(k [16]byte, oldest uint64) bool {
		if _, owned := o.active[k]; !owned {
			o.orphans[k] = oldest
		}
		return true
	})
}

// retryIdle is called when the run loop has asked NextRetry; pending is its answer.
func (o *orderer) retryIdle(pending bool) error {
	if o.recovering && !pending {
		o.d.log.Info("ordering: recovered; every earlier retry has been fetched")
		return o.settle()
	}
	return nil
}

// admit decides about a fetched delivery: true to send it now (it owns its
// key, or has none), false if it was parked. On an error dl was given back.
func (o *orderer) admit(dl *store.Delivery, now time.Time) (bool, error) {
	k, ok := o.key(dl.Message)
	if !ok {
		return true, nil
	}
	if owner, owned := o.active[k]; owned {
		if owner == dl.Seq {
			return true, nil
		}
		if dl.Seq < owner {
			o.d.log.Warn("ordering: an older message of a key arrived after a newer one took it; parking it",
				"seq", dl.ID.Seq(), "owner_seq", owner)
		}
		return false, o.park(dl, k)
	}
	if o.recovering {
		return false, o.park(dl, k)
	}
	p, parked, err := o.p.NextParked(k)
	if err != nil {
		o.d.src.Release(dl)
		return false, fmt.Errorf("ordering: next parked: %w", err)
	}
	if parked && p < dl.Seq {
		// An older message of the key is parked: it goes first.
		if err := o.park(dl, k); err != nil {
			return false, err
		}
		return false, o.unpark(k, p, now)
	}
	o.active[k] = dl.Seq
	delete(o.orphans, k)
	return true, nil
}

func (o *orderer) park(dl *store.Delivery, k [16]byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	defer cancel()
	if err := o.p.Park(ctx, dl, k); err != nil {
		o.d.src.Release(dl)
		return fmt.Errorf("ordering: park %s: %w", dl.ID, err)
	}
	o.d.parked.Add(1)
	return nil
}

// unpark makes seq, parked under k, due now and the owner of k.
func (o *orderer) unpark(k [16]byte, seq uint64, now time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	defer cancel()
	if err := o.p.Unpark(ctx, seq, k, now); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			delete(o.orphans, k)
			return nil // expired with its segment, or no longer parked
		}
		// Not owned: the next delivery of k, or a restart, tries again.
		return fmt.Errorf("ordering: unpark seq %d: %w", seq, err)
	}
	o.active[k] = seq
	delete(o.orphans, k)
	o.woke = true
	return nil
}

// done is called when the outcome of dl is recorded (final: delivered or
// dead) or could not be recorded (recorded false). stopping: Run is
// shutting down, so successors are left parked for the next start.
func (o *orderer) done(dl *store.Delivery, recorded, final, stopping bool, now time.Time) {
	k, ok := o.key(dl.Message)
	if !ok || o.active[k] != dl.Seq || !recorded || !final {
		return // unordered; or still owning its key (retrying, or in flight in the store)
	}
	delete(o.active, k)
	if stopping {
		return
	}
	p, parked, err := o.p.NextParked(k)
	if err == nil && parked {
		err = o.unpark(k, p, now)
	}
	if err != nil {
		o.d.log.Error("ordering: cannot hand the key to its next message; the next delivery of the key or a restart will", "err", err)
	}
}

// tick unparks orphans whose oldest parked message the cursor has passed.
func (o *orderer) tick(now time.Time) error {
	if o.recovering || len(o.orphans) == 0 {
		return nil
	}
	cur := o.p.Cursor()
	if cur == o.orphanAt {
		return nil
	}
	o.orphanAt = cur
	for k, p := range o.orphans {
		if _, owned := o.active[k]; owned {
			delete(o.orphans, k)
			continue
		}
		if cur > p {
			if err := o.unpark(k, p, now); err != nil {
				o.orphanAt = 0 // look again
				return err
			}
		}
	}
	return nil
}

// orderedFeeder is the feeder of a target with Target.Ordering: a plain
// round whose deliveries its orderer admits or parks. It holds no fetched
// message between rounds; it is a watcher: the orderer hands a key on when
// its owner's outcome is final, ends recovery when the retry schedule has
// nothing pending, and unparks orphaned keys as the cursor passes them.
type orderedFeeder struct {
	r   *runner
	ord *orderer
}

func newOrderedFeeder(r *runner) *orderedFeeder {
	d := r.d
	f := &orderedFeeder{r: r, ord: newOrderer(d, d.src.(Parker))}
	if err := f.ord.begin(); err != nil {
		d.log.Error("ordering: cannot read the parked keys or the retry schedule; recovering, looking again later", "err", err)
		f.ord.recovering = true
	}
	return f
}

func (f *orderedFeeder) prepare(turn) {}

func (f *orderedFeeder) holding() bool { return false }

// round fetches for the slots and tokens free and starts what the
// orderer admits; a message whose key has an earlier one in flight is
// parked instead.
func (f *orderedFeeder) round(t turn) (rd round) {
	if t.free <= 0 {
		return rd
	}
	// A message parked behind an earlier one of its key is not started.
	return f.r.fetchRound(t.now, t.gen, t.free, func(dl *store.Delivery) (bool, error) { return f.ord.admit(dl, t.now) })
}

func (f *orderedFeeder) release() {}

func (f *orderedFeeder) recorded(dl *store.Delivery, ok, final, stopping bool) {
	f.ord.done(dl, ok, final, stopping, f.r.d.now())
}

func (f *orderedFeeder) retryIdle(pending bool) bool {
	if err := f.ord.retryIdle(pending); err != nil {
		f.r.d.log.Error("ordering: cannot list parked keys; looking again later", "err", err)
		f.ord.recovering = true
		return false
	}
	return true
}

func (f *orderedFeeder) tick(now time.Time) (woke bool, wake time.Time) {
	o := f.ord
	if err := o.tick(now); err != nil {
		f.r.d.log.Error("ordering: cannot unpark a key's next message; trying again shortly", "err", err)
		wake = now.Add(fetchErrorPause)
	}
	woke, o.woke = o.woke, false
	return woke, wake
}
