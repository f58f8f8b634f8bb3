package loadtest

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPlainLine(t *testing.T) {
	for _, tt := range []struct {
		elapsed time.Duration
		s       ProgressSample
		eta     time.Duration
		want    string
	}{
		{2 * time.Second, ProgressSample{Planned: 3000, Sent: 1500, Accepted: 1490}, -1,
			"   2s  sent     1500/3000  accepted    1490"},
		{3 * time.Second, ProgressSample{Sent: 7, Accepted: 7}, -1,
			"   3s  sent             7  accepted       7"},
		{4 * time.Second, ProgressSample{Planned: 10, Sent: 10, Accepted: 10, Observed: true, Delivered: 4, Backlog: 6}, 2400 * time.Millisecond,
			"   4s  sent         10/10  accepted      10  delivered       4  backlog       6  drain ETA 2s"},
		{5 * time.Second, ProgressSample{Observed: true, Backlog: 6}, -1,
			"   5s  sent             0  accepted       0  delivered       0  backlog       6  drain ETA -"},
		{6 * time.Second, ProgressSample{Observed: true, Delivered: 10}, -1,
			"   6s  sent             0  accepted       0  delivered      10  backlog       0  drain ETA 0s"},
	} {
		if got := PlainLine(tt.elapsed, tt.s, tt.eta); got != tt.want {
			t.Errorf("PlainLine(%v, %+v, %v) =\n%q\nwant\n%q", tt.elapsed, tt.s, tt.eta, got, tt.want)
		}
	}
}

func TestETAEstimator(t *testing.T) {
	var e etaEstimator
	if got := e.eta(100); got != -1 {
		t.Errorf("no samples: %v", got)
	}
	// 300 delivered per second for 10 s: the window keeps the last 5 s.
	for i := range 11 {
		e.add(t0.Add(time.Duration(i)*time.Second), uint64(300*i))
	}
	if got := e.eta(600); got != 2*time.Second {
		t.Errorf("eta(600) at 300/s = %v, want 2s", got)
	}
	if len(e.samples) > 7 {
		t.Errorf("window not trimmed: %d samples", len(e.samples))
	}
	if got := e.eta(0); got != 0 {
		t.Errorf("eta(0) = %v", got)
	}
	// Delivery stops: no estimate once the window holds no progress.
	for i := 11; i < 20; i++ {
		e.add(t0.Add(time.Duration(i)*time.Second), 3000)
	}
	if got := e.eta(600); got != -1 {
		t.Errorf("stalled: eta = %v, want -1", got)
	}
}

// Plain mode prints one line per tick and one at Stop; a fake clock and a
// hand-fed tick channel make it exact, with no terminal and no sleeping.
func TestProgressPlain(t *testing.T) {
	var mu sync.Mutex
	now := t0
	sample := ProgressSample{Planned: 600, Observed: true}
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	step := func(sent, acc, del uint64) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Second)
		sample.Sent, sample.Accepted, sample.Delivered = sent, acc, del
		sample.Backlog = acc - del
	}
	out := &signalWriter{wrote: make(chan struct{}, 1)}
	ticks := make(chan time.Time)
	p := StartProgress(ProgressConfig{
		Out:    out,
		Sample: func() ProgressSample { mu.Lock(); defer mu.Unlock(); return sample },
		Now:    clock,
		ticks:  ticks,
	})
	tick := func() {
		ticks <- clock()
		select {
		case <-out.wrote:
		case <-time.After(5 * time.Second):
			t.Fatal("no line after a tick")
		}
	}
	step(600, 600, 100)
	tick()
	step(600, 600, 200)
	tick()
	step(600, 600, 600)
	p.Stop()
	p.Stop() // twice is fine

	want := strings.Join([]string{
		"   1s  sent       600/600  accepted     600  delivered     100  backlog     500  drain ETA -",
		"   2s  sent       600/600  accepted     600  delivered     200  backlog     400  drain ETA 4s",
		"   3s  sent       600/600  accepted     600  delivered     600  backlog       0  drain ETA 0s",
	}, "\n") + "\n"
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

// signalWriter is a buffer that tells of each write.
type signalWriter struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() { w.wrote <- struct{}{} }()
	return w.b.Write(p)
}

func (w *signalWriter) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

// Bars mode into a buffer (not a terminal) must finish and show the bars.
func TestProgressBarsFinish(t *testing.T) {
	var out bytes.Buffer
	p := StartProgress(ProgressConfig{
		Out:    &out,
		Bars:   true,
		redraw: true,
		Sample: func() ProgressSample {
			return ProgressSample{Planned: 10, Sent: 10, Accepted: 9, Observed: true, Delivered: 9}
		},
	})
	done := make(chan struct{})
	go func() { p.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return")
	}
	for _, want := range []string{"sent", "accepted", "delivered", "backlog", "10 / 10", "drain ETA 0s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bars lack %q:\n%s", want, out.String())
		}
	}
}
