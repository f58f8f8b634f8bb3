package loadtest

import (
	"testing"
	"time"
)

func TestHits(t *testing.T) {
	const s = time.Second
	tests := []struct {
		name    string
		p       Pacer
		elapsed time.Duration
		want    uint64
	}{
		{"constant at 0", ConstantPacer{PerSecond: 500}, 0, 0},
		{"constant before first", ConstantPacer{PerSecond: 500}, 1999 * time.Microsecond, 0},
		{"constant first", ConstantPacer{PerSecond: 500}, 2 * time.Millisecond, 1},
		{"constant 1s", ConstantPacer{PerSecond: 500}, s, 500},
		{"constant 2.002s", ConstantPacer{PerSecond: 500}, 2002 * time.Millisecond, 1001},
		{"constant fractional rate", ConstantPacer{PerSecond: 0.5}, 3 * s, 1},
		{"constant zero", ConstantPacer{}, time.Hour, 0},
		{"negative elapsed", ConstantPacer{PerSecond: 500}, -s, 0},

		// 0 -> 1000/s over 1s: the integral is 500 t^2 until 1s.
		{"ramp half way", RampPacer{To: 1000, Over: s}, s / 2, 125},
		{"ramp end", RampPacer{To: 1000, Over: s}, s, 500},
		{"ramp after", RampPacer{To: 1000, Over: s}, 3 * s, 2500},
		{"ramp down", RampPacer{From: 100, To: 0, Over: 2 * s}, 2 * s, 100},
		{"ramp no duration", RampPacer{From: 1, To: 100, Over: 0}, s, 100},

		// 100/s, x10 during [1s, 2s).
		{"spike before", SpikePacer{Base: 100, Factor: 10, At: s, For: s}, s, 100},
		{"spike inside", SpikePacer{Base: 100, Factor: 10, At: s, For: s}, 1500 * time.Millisecond, 600},
		{"spike end", SpikePacer{Base: 100, Factor: 10, At: s, For: s}, 2 * s, 1100},
		{"spike after", SpikePacer{Base: 100, Factor: 10, At: s, For: s}, 3 * s, 1200},
		{"spike from zero", SpikePacer{Base: 0, Factor: 10, At: s, For: s}, 3 * s, 0},

		// A pacer without an exact integral goes through the numerical path.
		{"numerical constant", rateFunc(func(time.Duration) float64 { return 200 }), 2 * s, 400},
		// Off the integer boundary: numerical integration is close, not exact.
		{"numerical ramp", rateFunc(func(t time.Duration) float64 { return 1000 * t.Seconds() }), 1001 * time.Millisecond, 501},
		{"numerical long run", rateFunc(func(time.Duration) float64 { return 10 }), time.Hour, 36000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Hits(tt.p, tt.elapsed); got != tt.want {
				t.Errorf("Hits(%v, %v) = %d, want %d", tt.p, tt.elapsed, got, tt.want)
			}
		})
	}
}

type rateFunc func(time.Duration) float64

func (f rateFunc) Rate(t time.Duration) float64 { return f(t) }

func TestPacerRate(t *testing.T) {
	ramp := RampPacer{From: 10, To: 20, Over: 10 * time.Second}
	spike := SpikePacer{Base: 5, Factor: 4, At: time.Second, For: time.Second}
	tests := []struct {
		p    Pacer
		at   time.Duration
		want float64
	}{
		{ramp, 0, 10},
		{ramp, 5 * time.Second, 15},
		{ramp, time.Minute, 20},
		{spike, 999 * time.Millisecond, 5},
		{spike, time.Second, 20},
		{spike, 2 * time.Second, 5}, // For is a half-open interval
	}
	for _, tt := range tests {
		if got := tt.p.Rate(tt.at); got != tt.want {
			t.Errorf("%v: Rate(%v) = %g, want %g", tt.p, tt.at, got, tt.want)
		}
	}
}

// The n-th request is due when Hits reaches n; nextDue must not wake the
// generator after that instant (it may wake before and re-check).
func TestNextDueNotLate(t *testing.T) {
	for _, p := range []Pacer{
		ConstantPacer{PerSecond: 500},
		RampPacer{From: 10, To: 2000, Over: 2 * time.Second},
		SpikePacer{Base: 50, Factor: 20, At: 500 * time.Millisecond, For: time.Second},
	} {
		elapsed := time.Duration(0)
		sent := uint64(0)
		for range 100_000 {
			if elapsed >= 3*time.Second {
				break
			}
			sent = Hits(p, elapsed)
			w := nextDue(p, elapsed, sent)
			if w <= 0 {
				t.Fatalf("%v: nextDue(%v, %d) = %v, want > 0", p, elapsed, sent, w)
			}
			// Just before the wake, the next request is not yet due.
			if h := Hits(p, elapsed+w-time.Nanosecond); h > sent+1 {
				t.Fatalf("%v: at %v, %d due before the wake at +%v, sent %d", p, elapsed, h, w, sent)
			}
			elapsed += w
		}
		if want := Hits(p, 3*time.Second); sent+1 < want {
			t.Errorf("%v: only %d of %d due by 3s", p, sent, want)
		}
	}
}

func TestPacerString(t *testing.T) {
	for _, tt := range []struct {
		p    Pacer
		want string
	}{
		{ConstantPacer{PerSecond: 500}, "constant 500/s"},
		{RampPacer{From: 1, To: 100, Over: time.Minute}, "ramp 1/s to 100/s over 1m0s"},
		{SpikePacer{Base: 100, Factor: 10, At: 5 * time.Second, For: 2 * time.Second}, "spike 100/s, x10 at 5s for 2s"},
	} {
		if got := tt.p.(interface{ String() string }).String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}
