package drain

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// Fairness between keys (Target.Fairness).
//
// The target's rate is shared round robin among the keys (tenants) that
// have backlog, so one key's flood cannot starve a trickling key. Messages
// without the key header form one more tenant, "no key".
//
// The run loop keeps, per key, a ready queue of fetched messages, at most
// perKey of them, and at most total over all keys (both small multiples of
// Concurrency). It fetches while the total has room, whether or not a token
// is free; a fetched message whose key's ready queue is full is parked in the
// store (Parker.Park: durable, no attempt spent), so the cursor moves past a
// flood and the other keys' messages are read. Each free token and slot goes
// to the next key in turn that has a ready message. When a key's ready
// queue runs low and it has parked messages, its oldest parked ones are
// unparked, due at once; Fetch returns them before new messages.
//
// Memory is bounded by total messages plus one small record per key with
// backlog (ready or parked), never by the backlog itself.
//
// # Nothing is lost
//
// A message is, at any moment, (1) never fetched, (2) in the retry
// schedule (a failed attempt, or unparked), (3) parked, or (4) fetched by
// this run: in a ready queue or under way. Fetch hands out (1) and (2) by
// itself. Messages in (4) are in flight in the store: at Run's end the
// ready queues are released (Release), and after a crash the store hands
// them out again (its floor lags, never leads). For (3), the run loop holds
// a "parked" mark per key that has (or may have) parked messages: it sets
// the mark when it parks, and at Run start for every key ParkedKeys lists;
// it clears it only when NextParked finds nothing for the key. A marked key
// is unparked whenever its ready queue has room, so every parked message
// comes back, oldest first per key. No order is kept: fairness needs none.
// Messages parked by another feature (ordering, before the policy changed)
// come back the same way; if the policy drops fairness, the next drainer
// unparks them all at start (unparkLeftovers).
//
// # Costs
//
// A flood costs two extra commits per message (park and unpark), grouped:
// the parks of one Fetch are committed together, and so are the unparks of
// one key in one round (UnparkN); the keys of a round are served
// concurrently. The run loop waits for the round's unparks, so with
// SyncAlways a flooding key alone is paced by the fsync latency (its ready
// queue, perKey messages, is refilled about once per commit).

// fairFetchFactor and fairPerKeyDiv size the ready queues: total is
// fairFetchFactor*Concurrency, perKey max(2, Concurrency/fairPerKeyDiv).
const (
	fairFetchFactor = 4
	fairPerKeyDiv   = 4
	// unparkForget is how long an unparked message is counted as on its
	// way back before the key may be unparked again without it.
	unparkForget = 2 * time.Second
)

// noKey is the tenant of messages without the key header: the hash of the
// empty value, which headerKey never returns for a message with the header.
var noKey = store.KeyHash(nil)

// tenant is one key's state in the fairer.
type tenant struct {
	key       [16]byte
	ready     []*store.Delivery    // fetched, waiting for a token and a slot
	parked    bool                 // may have parked messages in the store
	unparking map[uint64]time.Time // unparked, not yet fetched back -> when
	inRing    bool
}

// fairer shares a target's rate between keys for one Run; the run loop owns it.
type fairer struct {
	d   *Drainer
	p   Parker
	key func(*store.Message) ([16]byte, bool)

	perKey, total int

	tenants map[[16]byte]*tenant // keys with backlog: ready, parked or unparking
	ring    []*tenant            // keys with ready messages, in turn order
	turn    int                  // index into ring of the next key to send
	held    int                  // ready messages over all keys
	woke    bool                 // something was unparked: fetch again
	listed  bool                 // begin has listed the parked keys
}

func newFairer(d *Drainer, p Parker) *fairer {
	conc := d.target.Concurrency
	return &fairer{
		d: d, p: p, key: headerKey(d.target.Fairness.Key.Header),
		perKey: max(2, conc/fairPerKeyDiv), total: max(4, fairFetchFactor*conc),
		tenants: map[[16]byte]*tenant{},
	}
}

// begin is called at Run start: every key with parked messages is marked.
func (f *fairer) begin() error {
	err := f.p.ParkedKeys(func(k [16]byte, _ uint64) bool {
		f.tenant(k).parked = true
		return true
	})
	f.listed = err == nil
	return err
}

func (f *fairer) tenant(k [16]byte) *tenant {
	t := f.tenants[k]
	if t == nil {
		t = &tenant{key: k}
		f.tenants[k] = t
	}
	return t
}

// room returns how many messages the ready queues can take.
func (f *fairer) room() int { return f.total - f.held }

// admit takes the fetched deliveries: each goes to its key's ready queue,
// or is parked if that is full. Parks are committed concurrently (they
// share commits); a delivery that cannot be parked is given back.
func (f *fairer) admit(got []*store.Delivery, now time.Time) error {
	type parking struct {
		dl *store.Delivery
		k  [16]byte
	}
	var toPark []parking
	for _, dl := range got {
		k, ok := f.key(dl.Message)
		if !ok {
			k = noKey
		}
		t := f.tenant(k)
		delete(t.unparking, dl.Seq)
		if len(t.ready) >= f.perKey {
			t.parked = true
			toPark = append(toPark, parking{dl, k})
			continue
		}
		t.ready = append(t.ready, dl)
		f.held++
		if !t.inRing {
			t.inRing = true
			f.ring = append(f.ring, t)
		}
	}
	if len(toPark) == 0 {
		return nil
	}
	errs := make([]error, len(toPark))
	var wg sync.WaitGroup
	for i, p := range toPark {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
			defer cancel()
			errs[i] = f.p.Park(ctx, p.dl, p.k)
		})
	}
	wg.Wait()
	var first error
	for i, err := range errs {
		if err != nil {
			f.d.src.Release(toPark[i].dl)
			if first == nil {
				first = fmt.Errorf("fairness: park %s: %w", toPark[i].dl.ID, err)
			}
			continue
		}
		f.d.parked.Add(1)
	}
	return first
}

// next returns the ready message of the key whose turn it is, or nil.
func (f *fairer) next() *store.Delivery {
	if len(f.ring) == 0 {
		return nil
	}
	if f.turn >= len(f.ring) {
		f.turn = 0
	}
	t := f.ring[f.turn]
	dl := t.ready[0]
	t.ready[0] = nil
	t.ready = t.ready[1:]
	f.held--
	if len(t.ready) == 0 {
		t.ready = nil
		t.inRing = false
		f.ring = append(f.ring[:f.turn], f.ring[f.turn+1:]...)
		// turn now points at the key after t.
	} else {
		f.turn++
	}
	return dl
}

// refill unparks, for every marked key whose ready queue runs low, its
// oldest parked messages, up to what the queue has room for. Keys are
// served concurrently, the messages of each together (UnparkN), so a round
// costs about one commit, not one per message: the run loop waits for it.
func (f *fairer) refill(now time.Time) error {
	type job struct {
		t    *tenant
		want int
		got  []uint64
		none bool
		err  error
	}
	var jobs []*job
	for _, t := range f.tenants {
		for seq, at := range t.unparking {
			if now.Sub(at) > unparkForget {
				delete(t.unparking, seq) // not fetched back (gone, or fetch is behind)
			}
		}
		if !t.parked {
			if len(t.ready) == 0 && len(t.unparking) == 0 {
				delete(f.tenants, t.key)
			}
			continue
		}
		if want := f.perKey - len(t.ready) - len(t.unparking); len(t.ready) <= f.perKey/2 && want > 0 {
			jobs = append(jobs, &job{t: t, want: want})
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
			defer cancel()
			// A second look only if some of those found were gone (expired
			// with their segment) and more may be parked.
			for range 2 {
				seqs, all, err := f.p.UnparkN(ctx, j.t.key, j.want-len(j.got), now)
				j.got = append(j.got, seqs...)
				if err != nil {
					j.err = fmt.Errorf("fairness: unpark: %w", err)
					return
				}
				if all {
					j.none = true
					return
				}
				if len(j.got) >= j.want {
					return
				}
			}
		})
	}
	wg.Wait()
	var first error
	for _, j := range jobs {
		t := j.t
		if len(j.got) > 0 {
			f.woke = true
			if t.unparking == nil {
				t.unparking = map[uint64]time.Time{}
			}
			for _, seq := range j.got {
				t.unparking[seq] = now
			}
		}
		if j.none {
			t.parked = false
		}
		if j.err != nil && first == nil {
			first = j.err
		}
	}
	return first
}

// releaseAll gives every ready message back to the store (at Run's end, or
// while nothing may be sent): they stay due and are fetched again.
func (f *fairer) releaseAll() {
	for _, t := range f.ring {
		for _, dl := range t.ready {
			f.d.src.Release(dl)
		}
		t.ready, t.inRing = nil, false
	}
	f.ring, f.turn, f.held = f.ring[:0], 0, 0
}

// fairErrMsg is the log line of a failed round.
const fairErrMsg = "fairness: fetch, park or unpark failed; trying again shortly"

// fairFeeder is the feeder of a target with Target.Fairness: its fairer
// holds ready messages per key between rounds, fetched ahead of tokens.
type fairFeeder struct {
	r    *runner
	fair *fairer
}

func newFairFeeder(r *runner) *fairFeeder {
	d := r.d
	ff := &fairFeeder{r: r, fair: newFairer(d, d.src.(Parker))}
	if err := ff.fair.begin(); err != nil {
		d.log.Error("fairness: cannot list parked keys; looking again later", "err", err)
	}
	return ff
}

func (ff *fairFeeder) prepare(turn) {}

func (ff *fairFeeder) holding() bool { return ff.fair.held > 0 }

// release gives the ready queues back (releaseAll).
func (ff *fairFeeder) release() {
	if ff.fair.held > 0 {
		ff.fair.releaseAll()
	}
}

// round fills the ready queues (unless idle), sends ready messages round
// robin while free slots and tokens last, and unparks for keys that run
// low. The queues fill even with no free slot (t.free <= 0).
func (ff *fairFeeder) round(t turn) (res round) {
	r, d, f := ff.r, ff.r.d, ff.fair
	now, gen, free := t.now, t.gen, t.free
	if !f.listed {
		if err := f.begin(); err != nil {
			d.log.Error("fairness: cannot list parked keys; looking again later", "err", err)
		}
	}
	if room := f.room(); !t.idle && room > 0 {
		got, err := d.src.Fetch(room, now)
		res.fetched = true
		if aerr := f.admit(got, now); err == nil {
			err = aerr
		}
		if err != nil {
			res.err, res.errMsg = err, fairErrMsg
			return res
		}
		res.short = len(got) < room
		res.again = !res.short
	}
	if free > 0 && f.held > 0 {
		k, wait := r.tokens(now, free)
		sent := 0
		for sent < k && f.held > 0 && r.take(now, gen) {
			r.launch(f.next(), now)
			sent++
		}
		switch {
		case sent < k && f.held > 0:
			res.again = true // a control call came in, or a direct send took the slot
		case k == 0:
			res.wake = now.Add(wait)
		case f.held > 0 && sent < free:
			if _, wait := r.tokens(now, 1); wait > 0 {
				res.wake = now.Add(wait)
			} else {
				res.again = true
			}
		}
	}
	if err := f.refill(now); err != nil {
		res.err, res.errMsg = err, fairErrMsg
		return res
	}
	if f.woke {
		f.woke, res.again = false, true
	}
	return res
}

// leftoverWorkers bounds the keys unparked at once by unparkLeftovers;
// leftoverChunk is how many messages of a key each UnparkN unparks.
const (
	leftoverWorkers = 8
	leftoverChunk   = 64
)

// unparkLeftovers makes every message parked for this target due now, for
// a target that uses neither ordering nor fairness (any more: the policy
// changed while messages were parked). Nothing else would unpark them, and
// they would expire at the retention. It runs beside the run loop until
// done or ctx is cancelled, and kicks the loop as messages come due; a
// message it misses (an error) is found at the next start.
func (d *Drainer) unparkLeftovers(ctx context.Context, p Parker) {
	var keys [][16]byte
	if err := p.ParkedKeys(func(k [16]byte, _ uint64) bool {
		keys = append(keys, k)
		return true
	}); err != nil {
		d.log.Error("cannot list parked messages; they are looked for again at the next start", "err", err)
		return
	}
	if len(keys) == 0 {
		return
	}
	d.log.Warn("messages are parked though the target uses neither ordering nor fairness now; unparking them", "keys", len(keys))
	work := make(chan [16]byte)
	var n atomic.Uint64
	var wg sync.WaitGroup
	for range min(leftoverWorkers, len(keys)) {
		wg.Go(func() {
			for k := range work {
				empty := 0 // rounds in a row that found only messages gone meanwhile
				for ctx.Err() == nil && empty < 2 {
					seqs, all, err := p.UnparkN(ctx, k, leftoverChunk, d.now())
					if len(seqs) > 0 {
						n.Add(uint64(len(seqs)))
						d.wake()
						empty = 0
					} else {
						empty++
					}
					if err != nil {
						d.log.Error("cannot unpark parked messages; they are looked for again at the next start", "err", err)
						break
					}
					if all {
						break
					}
				}
			}
		})
	}
	for _, k := range keys {
		select {
		case work <- k:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	d.wake()
	d.log.Info("unparked the messages left parked", "messages", n.Load())
}
