// Package buftest opens buffer stores and queues for the tests of the
// packages above buffer (proxy, drain, cmd/sluice, bench/logs): the store in
// a temporary directory, closed when the test ends, and its queues opened as
// cmd/sluice opens them. It is imported by _test files only; nothing in it is
// part of sluice.
//
// It is not part of internal/testutil because buffer's own tests import
// testutil, and this package imports buffer.
package buftest

import (
	"testing"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// Open opens a store with cfg, in a new temporary directory of t when
// cfg.Dir is empty, and closes it when the test ends. Everything else in cfg
// is used as given. The test may close the store itself first (to open the
// directory again, say): closing twice is harmless.
func Open(t testing.TB, cfg buffer.Config) *buffer.Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	st, err := buffer.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Queue opens the queue name of st with targets, failing the test on error.
func Queue(t testing.TB, st *buffer.Store, name string, targets ...string) *buffer.Queue {
	t.Helper()
	q, err := st.Queue(name, targets)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// Queues opens the queue of every buffer and spillover route of pol in st,
// with the route's targets, as cmd/sluice does, keyed by route name.
func Queues(t testing.TB, st *buffer.Store, pol *policies.Policy) map[string]store.Queue {
	t.Helper()
	qs := map[string]store.Queue{}
	for _, r := range pol.Routes {
		if r.Mode != policies.ModeBuffer && r.Mode != policies.ModeSpillover {
			continue
		}
		names := make([]string, len(r.Targets))
		for i, tg := range r.Targets {
			names[i] = tg.Name
		}
		qs[r.Name] = Queue(t, st, r.Name, names...)
	}
	return qs
}
