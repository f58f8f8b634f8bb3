package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/admin"
	"github.com/sluice-proxy/sluice/store"
)

// messages adapts the store contract's Lister and Replayer to
// admin.Messages.
type messages struct{ n *node }

// listQueue is a queue that lists, counts and replays.
type listQueue interface {
	store.Queue
	store.Lister
	store.Replayer
}

func (m messages) queue(route string) (listQueue, error) {
	q := m.n.queue(route)
	if q == nil {
		return nil, fmt.Errorf("%w: no buffer or spillover route %q", admin.ErrNoTarget, route)
	}
	lq, ok := q.(listQueue)
	if !ok {
		return nil, fmt.Errorf("%w: route %q: its storage engine does not list, count or replay messages", admin.ErrUnsupported, route)
	}
	return lq, nil
}

func (m messages) List(route string, f store.Filter, after uint64, limit int, fn func(*store.Row) bool) (uint64, bool, error) {
	q, err := m.queue(route)
	if err != nil {
		return after, false, err
	}
	return q.Messages(f, after, limit, fn)
}

func (m messages) Counts(route string, since, until time.Time) ([]store.Counts, error) {
	q, err := m.queue(route)
	if err != nil {
		return nil, err
	}
	return queueCounts(q, since, until)
}

// queueCounts counts every target of q: the one function behind GET
// .../counts, the state's counts and the metrics.
func queueCounts(q listQueue, since, until time.Time) ([]store.Counts, error) {
	var out []store.Counts
	for _, t := range q.Targets() {
		c, err := q.Counts(t, since, until)
		if err != nil {
			return out, err
		}
		out = append(out, c)
	}
	return out, nil
}

func (m messages) Replay(ctx context.Context, route, target string, seq uint64, at time.Time) error {
	q, err := m.queue(route)
	if err != nil {
		return err
	}
	defer m.n.forgetDeadCount(route, target)
	return storeNotFound(q.Replay(ctx, target, seq, at))
}

// countCache keeps each route's all-time counts for 50 times what
// counting took (1 s to admin.CountsTTL): the state (GET /v1/routes,
// /metrics) shows them without counting every message at each call, and
// a small queue's are fresh.
type countCache struct {
	mu sync.Mutex
	m  map[string]cachedCounts
}

type cachedCounts struct {
	by  map[string]store.Counts
	at  time.Time
	ttl time.Duration // 50 times what the count took, from 1 s to admin.CountsTTL
}

// counts returns route's counts per target, from the cache when fresh.
func (n *node) counts(route string, q listQueue, now time.Time) map[string]store.Counts {
	n.countCache.mu.Lock()
	c, ok := n.countCache.m[route]
	n.countCache.mu.Unlock()
	if ok && now.Sub(c.at) < c.ttl {
		return c.by
	}
	t0 := time.Now()
	cs, err := queueCounts(q, time.Time{}, time.Time{})
	ttl := min(max(50*time.Since(t0), time.Second), admin.CountsTTL)
	if err != nil {
		n.log.Warn("counting a route's messages failed", "route", route, "err", err)
		return nil
	}
	by := make(map[string]store.Counts, len(cs))
	for _, c := range cs {
		by[c.Target] = c
	}
	n.countCache.mu.Lock()
	if n.countCache.m == nil {
		n.countCache.m = map[string]cachedCounts{}
	}
	n.countCache.m[route] = cachedCounts{by: by, at: now, ttl: ttl}
	n.countCache.mu.Unlock()
	return by
}
