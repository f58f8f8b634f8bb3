package admin

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// The dashboard's charts start with the last minutes, not empty: the server
// samples the state every HistoryEvery and keeps HistoryKeep of samples.
const (
	DefaultHistoryEvery = 2 * time.Second
	HistoryKeep         = 10 * time.Minute
)

// Sample is the state at one instant, for the dashboard's charts.
type Sample struct {
	At        time.Time         `json:"t"`
	Appended  uint64            `json:"appended"`  // messages stored by all routes since start
	Delivered uint64            `json:"delivered"` // messages delivered to all targets since start
	Backlog   map[string]uint64 `json:"backlog"`   // per "route/target"
}

// history is a ring of samples, oldest first.
type history struct {
	mu      sync.Mutex
	samples []Sample
	max     int
}

func (h *history) add(s Sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.samples) == h.max {
		copy(h.samples, h.samples[1:])
		h.samples = h.samples[:h.max-1]
	}
	h.samples = append(h.samples, s)
}

func (h *history) all() []Sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Sample{}, h.samples...)
}

func sampleOf(st State, at time.Time) Sample {
	s := Sample{At: at, Backlog: map[string]uint64{}}
	for _, r := range st.Routes {
		s.Appended += r.Appended
		for _, t := range r.Targets {
			s.Delivered += t.Delivered
			s.Backlog[r.Name+"/"+t.Name] = t.Backlog
		}
	}
	return s
}

// sampleLoop samples until ctx is done.
func (s *Server) sampleLoop(ctx context.Context) {
	tick := time.NewTicker(s.cfg.HistoryEvery)
	defer tick.Stop()
	for {
		s.hist.add(sampleOf(s.cfg.Node.State(), s.cfg.Now()))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *Server) getHistory(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"every_seconds": s.cfg.HistoryEvery.Seconds(), "samples": s.hist.all()})
}
