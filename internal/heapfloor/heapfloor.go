// Package heapfloor keeps the garbage collector from running while the
// heap is small.
//
// sluice's live heap is small and flat (a few MiB: bodies in flight and
// fetched ahead, bounded by the targets' concurrency), but a delivery
// allocates its message's body and a few small objects, so at full speed
// it allocates tens of MB a second. With the collector's default (GOGC=100:
// collect when the heap has grown by as much as was live) that is a
// collection every ~70 ms; the collector's own CPU was 1.7-2.1 µs a
// delivered message, against 0.14-0.61 µs with a 64 MiB floor
// (BenchmarkDrainNoop in drain/, gc-cpu-µs/msg).
//
// Start sets the heap goal to at least a floor: after each collection, the
// GC percent becomes max(GOGC's default 100, 100*(floor-live)/live) (see
// Percent for the cap), where live is what that collection found live. Below the floor the heap may
// grow to the floor before the next collection; above it the collector
// works as with GOGC=100. A GOMEMLIMIT set by the operator still bounds
// the heap (the runtime collects early to keep under it), and a GOGC set
// in the environment turns the floor off: the operator's setting wins.
//
// Cost: up to floor bytes of heap where GOGC=100 would have held about
// twice the live heap; one read of runtime/metrics and, when the percent
// changes by more than an eighth, one debug.SetGCPercent per collection,
// on the finalizer goroutine.
package heapfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// basePercent is GOGC's default, the percent used above the floor.
const basePercent = 100

// heapMinimum is the runtime's smallest heap goal at GOGC=100. The
// runtime scales it with the percent (the goal is at least
// heapMinimum*p/100), so the percent is capped at what puts that
// minimum at the floor: a tiny live heap does not make the goal larger
// than the floor.
const heapMinimum = 4 << 20

// Percent is the GC percent that makes the heap goal (the larger of
// live*(1+p/100) and heapMinimum*p/100) the floor, or basePercent if the
// live heap is already past half the floor.
func Percent(live, floor uint64) int {
	top := max(floor*100/heapMinimum, basePercent)
	if live == 0 {
		return int(top)
	}
	if live >= floor {
		return basePercent
	}
	p := (floor - live) * 100 / live
	return int(min(max(p, basePercent), top))
}

var running sync.Mutex // one floor per process

// Start keeps the heap goal at least floor bytes until the returned stop
// is called, which puts the GC percent back as it was. It does nothing
// (and reports false) when GOGC is set in the environment, when floor is
// zero, or while an earlier Start has not been stopped.
func Start(floor uint64) (stop func(), ok bool) {
	if _, set := os.LookupEnv("GOGC"); set || floor == 0 || !running.TryLock() {
		return func() {}, false
	}
	t := &tuner{floor: floor, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.prev = debug.SetGCPercent(basePercent)
	t.percent = basePercent
	t.adjust()
	t.arm()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.stopped.Store(true)
			debug.SetGCPercent(t.prev)
			t.mu.Unlock()
			running.Unlock()
		})
	}, true
}

type tuner struct {
	floor   uint64
	prev    int // the GC percent before Start
	mu      sync.Mutex
	stopped atomic.Bool
	percent int // the percent set last
	sample  []metrics.Sample
}

// sentinel is garbage made for the collector: its finalizer runs after
// the collection that found it unreachable, and arms the next one.
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	s := &sentinel{t: t}
	runtime.SetFinalizer(s, func(s *sentinel) {
		if s.t.stopped.Load() {
			return
		}
		s.t.adjust()
		s.t.arm()
	})
}

// adjust sets the percent for the live heap the last collection found.
func (t *tuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	p := Percent(t.sample[0].Value.Uint64(), t.floor)
	if d := p - t.percent; d > t.percent/8 || -d > t.percent/8 {
		debug.SetGCPercent(p)
		t.percent = p
	}
}
