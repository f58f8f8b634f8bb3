package main

// Thin adapters from the running node (drainers, store) to the admin
// package's interfaces. They hold no logic of their own beyond translating
// types, so that a change of the store's API costs only these lines.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sluice-proxy/sluice/admin"
	"github.com/sluice-proxy/sluice/drain"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// Target implements admin.Targets: the drainer in force for a target,
// followed across reloads.
func (n *node) Target(route, target string) (admin.Target, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.runs[runKey{route, target}]; !ok {
		return nil, false
	}
	return liveTarget{n, runKey{route, target}}, true
}

// liveTarget forwards to whichever drainer runs the target now.
type liveTarget struct {
	n   *node
	key runKey
}

func (t liveTarget) drainer() *drain.Drainer {
	t.n.mu.Lock()
	defer t.n.mu.Unlock()
	return t.n.runs[t.key].d
}

func (t liveTarget) Pause()                  { t.drainer().Pause() }
func (t liveTarget) Resume()                 { t.drainer().Resume() }
func (t liveTarget) SetRate(r policies.Rate) { t.drainer().SetRate(r) }
func (t liveTarget) ResetRate()              { t.drainer().ResetRate() }

// Ready implements admin.Node.
func (n *node) Ready() error {
	if n.stopping.Load() {
		return errors.New("shutting down")
	}
	n.mu.Lock()
	runs := make([]*targetRun, 0, len(n.runs))
	for _, r := range n.runs {
		runs = append(runs, r)
	}
	st := n.pol.Storage
	n.mu.Unlock()
	for _, r := range runs {
		select {
		case <-r.d.Ready():
		default:
			return fmt.Errorf("route %q: target %q: drainer not started", r.route.Name, r.target.Name)
		}
		select {
		case <-r.done:
			return fmt.Errorf("route %q: target %q: drainer stopped", r.route.Name, r.target.Name)
		default:
		}
	}
	if st.MaxBytes > 0 && n.store.Bytes() >= st.MaxBytes {
		return fmt.Errorf("storage full: %d bytes stored, storage.max_bytes %d: buffered routes answer 503", n.store.Bytes(), st.MaxBytes)
	}
	if st.MinFreeBytes > 0 {
		if free, err := freeDisk(st.Dir); err == nil && free < st.MinFreeBytes {
			return fmt.Errorf("disk nearly full: %d bytes free, storage.min_free_bytes %d: buffered routes answer 503", free, st.MinFreeBytes)
		}
	}
	return nil
}

// State implements admin.Node.
func (n *node) State() admin.State {
	n.mu.Lock()
	pol := n.pol
	runs := make(map[runKey]*targetRun, len(n.runs))
	for k, r := range n.runs {
		runs[k] = r
	}
	n.mu.Unlock()
	now := time.Now()
	st := admin.State{StoreBytes: n.store.Bytes(), FreeBytes: -1, Loops: admin.LoopCounts(n.proxy.LoopCounts())}
	if free, err := freeDisk(pol.Storage.Dir); err == nil {
		st.FreeBytes = free
	}
	// Routes of the policy in its order, then those a reload removed.
	var names []string
	modes := map[string]string{}
	for _, r := range pol.Routes {
		names = append(names, r.Name)
		modes[r.Name] = r.Mode
	}
	var retired []string
	for k, r := range runs {
		if _, ok := modes[k.route]; !ok && !slices.Contains(retired, k.route) {
			retired = append(retired, k.route)
			modes[k.route] = r.route.Mode
		}
	}
	sort.Strings(retired)
	for _, name := range append(names, retired...) {
		rs := admin.RouteState{Name: name, Mode: modes[name], Retired: slices.Contains(retired, name)}
		q := n.queue(name)
		if q == nil {
			st.Routes = append(st.Routes, rs)
			continue
		}
		qs := q.Stats()
		rs.Appended, rs.Expired = qs.Appended, qs.Expired
		rs.Writer = q.writer()
		var counts map[string]store.Counts
		if lq, ok := q.(listQueue); ok {
			counts = n.counts(name, lq, now)
		}
		for _, ts := range qs.Targets {
			run := runs[runKey{name, ts.Target}]
			if run == nil {
				continue
			}
			t := n.targetState(q, run, ts, now)
			if c, ok := counts[ts.Target]; ok {
				t.Counts = &admin.TargetCounts{Counts: c, Pending: c.Pending()}
			}
			rs.Targets = append(rs.Targets, t)
		}
		st.Routes = append(st.Routes, rs)
	}
	return st
}

// oldestPending is what an engine may tell of a target's oldest unfinished
// message (buffer does).
type oldestPending interface {
	OldestPending(target string) (time.Time, bool)
}

func (n *node) targetState(q store.DeadLetters, run *targetRun, ts store.TargetStats, now time.Time) admin.TargetState {
	ds := run.d.Stats()
	t := admin.TargetState{
		Name:     ts.Target,
		Pending:  ts.Pending,
		Retrying: ts.Retrying,
		InFlight: ts.InFlight,
		Expired:  ts.Expired,
		Backlog:  ts.Pending + uint64(ts.Retrying) + uint64(ts.InFlight),
		Paused:   ds.Paused,
		Breaker:  ds.Breaker.String(),

		Outcomes: outcomes(addStats(run.base, ds).ByClass),

		Delivered: run.base.Delivered + ds.Delivered,
		Retried:   run.base.Retried + ds.Retried,
		Dead:      run.base.Dead + ds.Dead,
	}
	if op, ok := q.(oldestPending); ok {
		if at, ok := op.OldestPending(ts.Target); ok {
			t.OldestPendingAge = max(0, now.Sub(at).Seconds())
		}
	}
	t.Rate = ds.Rate
	if run.target.Adaptive != nil && ds.AdaptiveRate < ds.Rate {
		t.Rate = ds.AdaptiveRate
	}
	o, overridden := n.controls.Get(run.route.Name, ts.Target)
	switch {
	case ds.Paused:
		t.RateReason = "operator_pause"
	case overridden && o.Rate != "":
		t.RateReason = "operator"
	case ds.Rate == 0:
		t.RateReason = "paused"
	case t.Rate < ds.Rate:
		t.RateReason = "adaptive"
	case run.target.RateAt(now) != run.target.Rate:
		t.RateReason = "window"
	default:
		t.RateReason = "policy"
	}
	switch {
	case math.IsInf(t.Rate, 1):
		t.RateText = "unlimited"
	case t.Rate == 0:
		t.RateText = "0"
	default:
		t.RateText = strconv.FormatFloat(t.Rate, 'f', -1, 64) + "/s"
	}
	t.DrainETASeconds = -1
	if eta, ok := run.d.ETA(now, t.Backlog); ok {
		t.DrainETA = &eta
		t.DrainETASeconds = max(0, eta.Sub(now).Seconds())
	}
	t.DeadLetters = n.deadCount(q, run.route.Name, ts.Target, now)
	return t
}

// outcomes turns drain's counts by class into the state's.
func outcomes(by [3][6]uint64) []admin.OutcomeCount {
	var out []admin.OutcomeCount
	for o, name := range [3]string{drain.OutcomeDelivered: "delivered", drain.OutcomeRetried: "retried", drain.OutcomeDead: "dead"} {
		for c, n := range by[o] {
			if n == 0 {
				continue
			}
			class := "none"
			if c > 0 {
				class = strconv.Itoa(c) + "xx"
			}
			out = append(out, admin.OutcomeCount{Outcome: name, Class: class, N: n})
		}
	}
	return out
}

// deadCounts caches each target's dead-letter count: counting reads the
// list, so it is done at most every deadCountTTL (and after a replay or
// purge).
type deadCounts struct {
	mu sync.Mutex
	m  map[runKey]deadCount
}

type deadCount struct {
	n  int
	at time.Time
}

const (
	deadCountTTL      = 5 * time.Second
	deadCountLarge    = 10000
	deadCountLargeTTL = time.Minute
)

func (n *node) deadCount(q store.DeadLetters, route, target string, now time.Time) int {
	key := runKey{route, target}
	n.dead.mu.Lock()
	c, ok := n.dead.m[key]
	n.dead.mu.Unlock()
	ttl := deadCountTTL
	if c.n >= deadCountLarge {
		ttl = deadCountLargeTTL // counting reads every letter's record: not every few seconds for a long list
	}
	if ok && now.Sub(c.at) < ttl {
		return c.n
	}
	count := 0
	var after uint64
	for count < admin.DeadLetterCountLimit {
		page, err := q.DeadLetters(target, after, 1000)
		if err != nil {
			break
		}
		count += len(page)
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].Message.Seq
	}
	count = min(count, admin.DeadLetterCountLimit)
	n.dead.mu.Lock()
	if n.dead.m == nil {
		n.dead.m = map[runKey]deadCount{}
	}
	n.dead.m[key] = deadCount{n: count, at: now}
	n.dead.mu.Unlock()
	return count
}

func (n *node) forgetDeadCount(route, target string) {
	n.dead.mu.Lock()
	delete(n.dead.m, runKey{route, target})
	n.dead.mu.Unlock()
}

// deadLetters adapts the store contract's dead-letter lists to
// admin.DeadLetters.
type deadLetters struct{ n *node }

// deadQueue is a queue with dead letters, as the store contract names it.
type deadQueue interface {
	store.Queue
	store.DeadLetters
}

func (a deadLetters) queue(route, target string) (deadQueue, error) {
	q := a.n.queue(route)
	if q == nil || !slices.Contains(q.Targets(), target) {
		return nil, fmt.Errorf("%w: route %q has no buffered target %q", admin.ErrNoTarget, route, target)
	}
	return q, nil
}

func (a deadLetters) List(route, target string, after uint64, limit int) ([]admin.DeadLetter, error) {
	q, err := a.queue(route, target)
	if err != nil {
		return nil, err
	}
	dls, err := q.DeadLetters(target, after, limit)
	out := make([]admin.DeadLetter, 0, len(dls))
	for i := range dls {
		out = append(out, toDeadLetter(&dls[i], false))
	}
	return out, err
}

func (a deadLetters) Get(route, target, id string) (admin.DeadLetter, error) {
	q, err := a.queue(route, target)
	if err != nil {
		return admin.DeadLetter{}, err
	}
	pid, err := store.ParseID(id)
	if err != nil || pid.Seq() == 0 {
		return admin.DeadLetter{}, fmt.Errorf("%w: %q is not a message id", admin.ErrNotFound, id)
	}
	dls, err := q.DeadLetters(target, pid.Seq()-1, 1)
	if err != nil {
		return admin.DeadLetter{}, err
	}
	if len(dls) == 0 || dls[0].Message.Seq != pid.Seq() || dls[0].Message.ID.String() != pid.String() {
		return admin.DeadLetter{}, fmt.Errorf("%w: no dead letter %s for route %q, target %q", admin.ErrNotFound, id, route, target)
	}
	return toDeadLetter(&dls[0], true), nil
}

func (a deadLetters) Revive(ctx context.Context, route, target string, seq uint64, at time.Time) error {
	q, err := a.queue(route, target)
	if err != nil {
		return err
	}
	defer a.n.forgetDeadCount(route, target)
	return storeNotFound(q.Revive(ctx, target, seq, at))
}

func (a deadLetters) Purge(ctx context.Context, route, target string, seq uint64) error {
	q, err := a.queue(route, target)
	if err != nil {
		return err
	}
	defer a.n.forgetDeadCount(route, target)
	return storeNotFound(q.Purge(ctx, target, seq))
}

func storeNotFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %v", admin.ErrNotFound, err)
	}
	return err
}

func toDeadLetter(dl *store.DeadLetter, full bool) admin.DeadLetter {
	m := dl.Message
	d := admin.DeadLetter{ID: m.ID.String(), Seq: m.Seq, Method: m.Method, URI: m.URI, EnqueuedAt: m.EnqueuedAt, Attempts: dl.State.Attempts}
	if m.Method == "" && m.URI == "" {
		d.Damaged = true
	}
	if last, ok := dl.State.Last(); ok {
		d.Status, d.Error, d.DeadAt = last.Status, last.Error, last.At
	}
	d.Class = admin.ClassOf(d.Status, d.Error)
	if d.Damaged {
		d.Class = "damaged"
	}
	if !full {
		return d
	}
	if len(m.Header) > 0 {
		d.Header = http.Header{}
		for _, h := range m.Header {
			d.Header[h.Name] = append(d.Header[h.Name], h.Value)
		}
	}
	if utf8.Valid(m.Body) {
		d.Body = string(m.Body)
	} else {
		d.Body64 = m.Body
	}
	for _, a := range dl.State.History {
		d.History = append(d.History, admin.Attempt{N: a.N, At: a.At, Status: a.Status, Error: a.Error})
	}
	return d
}
