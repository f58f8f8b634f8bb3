package jetstore

import (
	"log/slog"
	"testing"

	"github.com/sluice-proxy/sluice/store"
	"github.com/sluice-proxy/sluice/store/storetest"
)

// The store contract's conformance suite, on an embedded single-node
// server whose file store lives in the suite's directory (a restart is a
// new server on the same directory).
func TestConformance(t *testing.T) { storetest.Run(t, engine(false)) }

// The suite again with the listing reading one state per get, as with
// servers older than NATS 2.11 (no batched direct get): only the cases
// that list.
func TestConformanceOneGetEach(t *testing.T) {
	e := engine(true)
	storetest.RunOnly(t, e, "ListAndCount", "ListPages", "PurgedPhase", "Replay")
}

func engine(oneGetEach bool) storetest.Engine {
	return storetest.Engine{Open: func(t *testing.T, dir string, targets []string) storetest.Opened {
		s, err := Open(Config{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		s.noMulti.Store(oneGetEach)
		q, err := s.Queue("orders", targets)
		if err != nil {
			s.Close()
			t.Fatal(err)
		}
		return storetest.Opened{
			Queue: q,
			Consumer: func(target string) store.Consumer {
				c, err := q.Consumer(target)
				if err != nil {
					t.Fatal(err)
				}
				return c
			},
			Close: s.Close,
		}
	}}
}
