package loadtest

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// ProgressSample is what a progress display shows at one moment. The
// caller's Sample function fills it from a Recorder and whatever knows the
// backlog (a Downstream, or sluice's own queue).
type ProgressSample struct {
	Planned  uint64 // sends planned in all; 0 when not known in advance
	Sent     uint64 // sends that went out (Recorder's Sent)
	Accepted uint64 // 202 answers

	// Observed says that Delivered and Backlog are known: a downstream (or
	// the proxy's queue) is being watched.
	Observed  bool
	Delivered uint64 // accepted messages delivered at least once
	Backlog   uint64 // accepted, not yet delivered
}

// ProgressConfig describes a progress display.
type ProgressConfig struct {
	Out    io.Writer             // required
	Sample func() ProgressSample // required; called from the display's goroutine

	// Bars draws live progress bars, redrawn in place: for a terminal.
	// Without it, one plain line is printed every Interval, which suits a
	// log file or a CI job.
	Bars     bool
	Interval time.Duration // between plain lines; default 1s

	Now func() time.Time // default time.Now

	ticks  <-chan time.Time // tests drive plain mode with it
	redraw bool             // tests draw bars into a buffer, which is no terminal
}

// Progress is a running display; Stop ends it.
type Progress struct {
	cfg   ProgressConfig
	start time.Time
	eta   etaEstimator
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// StartProgress starts a display in a goroutine of its own; Stop ends it.
func StartProgress(cfg ProgressConfig) *Progress {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Progress{cfg: cfg, start: cfg.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	if cfg.Bars {
		go p.runBars()
	} else {
		go p.runPlain()
	}
	return p
}

// Stop shows the state one last time and returns when the display has
// finished writing. It is safe to call more than once.
func (p *Progress) Stop() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}

func (p *Progress) runPlain() {
	defer close(p.done)
	ticks := p.cfg.ticks
	if ticks == nil {
		t := time.NewTicker(p.cfg.Interval)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-p.stop:
			p.printLine()
			return
		case <-ticks:
			p.printLine()
		}
	}
}

func (p *Progress) printLine() {
	now := p.cfg.Now()
	s := p.cfg.Sample()
	p.eta.add(now, s.Delivered)
	fmt.Fprintln(p.cfg.Out, PlainLine(now.Sub(p.start), s, p.eta.eta(s.Backlog)))
}

// PlainLine is one line of plain progress: elapsed time, sent (of planned),
// accepted, and, when a downstream is observed, delivered, backlog and
// the estimated time left to drain it (eta < 0: not known yet).
func PlainLine(elapsed time.Duration, s ProgressSample, eta time.Duration) string {
	sent := fmt.Sprintf("%d", s.Sent)
	if s.Planned > 0 {
		sent = fmt.Sprintf("%d/%d", s.Sent, s.Planned)
	}
	line := fmt.Sprintf("%4.0fs  sent %13s  accepted %7d", elapsed.Seconds(), sent, s.Accepted)
	if s.Observed {
		line += fmt.Sprintf("  delivered %7d  backlog %7d  drain ETA %s", s.Delivered, s.Backlog, fmtETA(s.Backlog, eta))
	}
	return line
}

func fmtETA(backlog uint64, eta time.Duration) string {
	switch {
	case backlog == 0:
		return "0s"
	case eta < 0:
		return "-"
	}
	return eta.Round(time.Second).String()
}

// etaEstimator guesses the time left to drain from the delivery rate over
// the last etaWindow: recent enough to follow a change of rate, long
// enough not to jump with every second's count.
type etaEstimator struct {
	samples []etaSample // oldest first, within etaWindow of the newest
}

type etaSample struct {
	at        time.Time
	delivered uint64
}

const etaWindow = 5 * time.Second

func (e *etaEstimator) add(at time.Time, delivered uint64) {
	e.samples = append(e.samples, etaSample{at, delivered})
	i := 0
	for i < len(e.samples)-2 && at.Sub(e.samples[i+1].at) >= etaWindow {
		i++
	}
	e.samples = e.samples[i:]
}

// eta is backlog divided by the recent delivery rate; -1 when nothing was
// delivered in the window, 0 when there is no backlog.
func (e *etaEstimator) eta(backlog uint64) time.Duration {
	if backlog == 0 {
		return 0
	}
	if len(e.samples) < 2 {
		return -1
	}
	first, last := e.samples[0], e.samples[len(e.samples)-1]
	dt := last.at.Sub(first.at)
	if dt <= 0 || last.delivered <= first.delivered {
		return -1
	}
	rate := float64(last.delivered-first.delivered) / dt.Seconds()
	return time.Duration(float64(backlog) / rate * float64(time.Second))
}

// barRefresh is how often the bars are updated; mpb redraws on its own
// ticker.
const barRefresh = 200 * time.Millisecond

func (p *Progress) runBars() {
	defer close(p.done)
	var (
		mu     sync.Mutex
		last   ProgressSample
		eta    time.Duration = -1
		peakBL uint64
	)
	snapshot := func() (ProgressSample, time.Duration) { mu.Lock(); defer mu.Unlock(); return last, eta }

	opts := []mpb.ContainerOption{mpb.WithOutput(p.cfg.Out), mpb.WithWidth(100), mpb.WithRefreshRate(barRefresh)}
	if p.cfg.redraw {
		opts = append(opts, mpb.WithAutoRefresh())
	}
	c := mpb.New(opts...)
	name := func(s string) decor.Decorator { return decor.Name(s, decor.WC{W: 10, C: decor.DindentRight}) }
	text := func(f func(ProgressSample, time.Duration) string) decor.Decorator {
		return decor.Any(func(decor.Statistics) string { s, e := snapshot(); return f(s, e) }, decor.WC{W: 34, C: decor.DindentRight})
	}
	bar := func(label string, f func(ProgressSample, time.Duration) string) *mpb.Bar {
		return c.New(0, mpb.BarStyle().Lbound("[").Filler("=").Tip(">").Padding(" ").Rbound("]"),
			mpb.BarWidth(40),
			mpb.PrependDecorators(name(label)),
			mpb.AppendDecorators(text(f)))
	}
	of := func(n, total uint64) string {
		if total == 0 {
			return fmt.Sprintf(" %d", n)
		}
		return fmt.Sprintf(" %d / %d  %3.0f%%", n, total, 100*float64(n)/float64(total))
	}
	sent := bar("sent", func(s ProgressSample, _ time.Duration) string { return of(s.Sent, s.Planned) })
	accepted := bar("accepted", func(s ProgressSample, _ time.Duration) string { return of(s.Accepted, s.Sent) })
	var delivered, backlog *mpb.Bar
	update := func() {
		now := p.cfg.Now()
		s := p.cfg.Sample()
		p.eta.add(now, s.Delivered)
		mu.Lock()
		last, eta = s, p.eta.eta(s.Backlog)
		peakBL = max(peakBL, s.Backlog)
		mu.Unlock()
		set(sent, s.Sent, max(s.Planned, s.Sent))
		set(accepted, s.Accepted, max(s.Sent, s.Accepted))
		if s.Observed && delivered == nil {
			delivered = bar("delivered", func(s ProgressSample, _ time.Duration) string { return of(s.Delivered, s.Accepted) })
			backlog = bar("backlog", func(s ProgressSample, e time.Duration) string {
				return fmt.Sprintf(" %d  drain ETA %s", s.Backlog, fmtETA(s.Backlog, e))
			})
		}
		if delivered != nil {
			set(delivered, s.Delivered, max(s.Accepted, s.Delivered))
			set(backlog, s.Backlog, peakBL)
		}
	}

	t := time.NewTicker(barRefresh)
	defer t.Stop()
	for {
		update()
		select {
		case <-p.stop:
			update() // the final state, then freeze every bar where it is
			for _, b := range []*mpb.Bar{sent, accepted, delivered, backlog} {
				if b != nil {
					// Abort without dropping keeps the bar as drawn: a backlog of
					// 0 stays empty and 1980 of 2000 accepted stays short of
					// full, where completing would fill them.
					b.Abort(false)
				}
			}
			c.Wait()
			return
		case <-t.C:
		}
	}
}

// set moves a bar to current of total; a total of 0 shows an empty bar.
func set(b *mpb.Bar, current, total uint64) {
	b.SetTotal(int64(max(total, 1)), false)
	b.SetCurrent(int64(current))
}
