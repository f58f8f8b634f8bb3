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
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Engine{Open: func(t *testing.T, dir string, targets []string) storetest.Opened {
		s, err := Open(Config{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
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
	}})
}
