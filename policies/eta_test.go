package policies

import (
	"testing"
	"time"
)

func TestETA(t *testing.T) {
	u := time.UTC
	sh := loadLoc(t, "Asia/Shanghai")
	mon21 := at(u, 2025, 3, 3, 21, 0) // a Monday
	night := []Window{between("22:00", "06:00", rate(100))}
	cases := []struct {
		name    string
		tg      Target
		now     time.Time
		backlog float64
		want    time.Time // zero: unknown
	}{
		{"empty backlog", Target{Rate: rate(10)}, mon21, 0, mon21},
		{"steady rate", Target{Rate: rate(10)}, mon21, 600, mon21.Add(time.Minute)},
		{"fractional rate", Target{Rate: rate(0.5)}, mon21, 3, mon21.Add(6 * time.Second)},
		{"unlimited", Target{Rate: unlimited}, mon21, 1e9, mon21},
		{"unlimited window", Target{Rate: rate(0), Windows: []Window{between("22:00", "06:00", unlimited)}}, mon21, 1e6, at(u, 2025, 3, 3, 22, 0)},
		{"paused, no end", Target{Rate: rate(0)}, mon21, 1, time.Time{}},
		{"paused, no end, empty backlog", Target{Rate: rate(0)}, mon21, 0, time.Time{}},
		// Nothing ahead, but a paused window: delivered when it ends, not now.
		{"paused window, empty backlog", Target{Rate: rate(10), Windows: []Window{between("21:00", "23:00", rate(0))}}, mon21, 0, at(u, 2025, 3, 3, 23, 0)},
		{"night window, empty backlog", Target{Rate: rate(0), Windows: night}, mon21, 0, at(u, 2025, 3, 3, 22, 0)},
		{"paused window", Target{Rate: rate(10), Windows: []Window{between("21:00", "23:00", rate(0))}}, mon21, 600, at(u, 2025, 3, 3, 23, 1)},
		{"paused every day", Target{Rate: rate(5), Windows: []Window{between("00:00", "23:59", rate(0)), between("23:59", "00:00", rate(0))}}, mon21, 1, time.Time{}},
		// Only the night window drains: 22:00 + 3600 s.
		{"midnight window, first night", Target{Rate: rate(0), Windows: night}, mon21, 360000, at(u, 2025, 3, 3, 23, 0)},
		// 8 h × 100/s = 2,880,000 a night; the rest goes after midnight... of the next night.
		{"midnight window, across midnight", Target{Rate: rate(0), Windows: night}, mon21, 2880000 - 100*3600, at(u, 2025, 3, 4, 5, 0)},
		{"midnight window, second night", Target{Rate: rate(0), Windows: night}, mon21, 2880000 + 100*60, at(u, 2025, 3, 4, 22, 1)},
		// 10 nights later: the skip of whole weeks lands on the same night.
		{"midnight window, many nights", Target{Rate: rate(0), Windows: night}, mon21, 2880000*10 + 100*60, at(u, 2025, 3, 13, 22, 1)},
		{"midnight window, in Shanghai", Target{Rate: rate(0), Timezone: sh, Windows: night}, at(sh, 2025, 3, 3, 23, 0), 100 * 60, at(sh, 2025, 3, 3, 23, 1)},
		{"slow and far", Target{Rate: Rate{PerSecond: 1.0 / 3600}}, mon21, 1e8, time.Time{}},
		{"weekends only", Target{Rate: rate(0), Windows: []Window{onDays(rate(1), time.Saturday, time.Sunday)}}, mon21, 60, at(u, 2025, 3, 8, 0, 1)},
	}
	for _, c := range cases {
		got, ok := c.tg.ETA(c.now, c.backlog)
		switch {
		case c.want.IsZero() && ok:
			t.Errorf("%s: ETA = %v, want unknown", c.name, got)
		case !c.want.IsZero() && !ok:
			t.Errorf("%s: ETA unknown, want %v", c.name, c.want)
		case ok && !got.Equal(c.want):
			t.Errorf("%s: ETA = %v, want %v", c.name, got, c.want)
		}
	}
}

func BenchmarkETA(b *testing.B) {
	tg := Target{Rate: rate(0), Windows: []Window{between("22:00", "06:00", rate(100)), onDays(rate(50), time.Sunday)}}
	now := at(time.UTC, 2025, 3, 3, 21, 0)
	for b.Loop() {
		tg.ETA(now, 1e8)
	}
}

func TestCallbacksAllows(t *testing.T) {
	c := &Callbacks{Allow: []string{"http://127.0.0.1:9000/", "https://hooks.example.com/sluice/"}}
	for u, want := range map[string]bool{
		"http://127.0.0.1:9000/":                     true,
		"http://127.0.0.1:9000/orders?x=1":           true,
		"https://hooks.example.com/sluice/a":         true,
		"https://hooks.example.com/other":            false,
		"http://127.0.0.1:90001/":                    false,
		"https://hooks.example.com.evil.org/sluice/": false,
		"http://127.0.0.1:9000@evil.org/":            false,
		"HTTP://127.0.0.1:9000/":                     false, // judged as written
		"":                                           false,
		"http://127.0.0.1:9000/" + string(make([]byte, MaxCallbackURL)): false,
	} {
		if got := c.Allows(u); got != want {
			t.Errorf("Allows(%.60q) = %v, want %v", u, got, want)
		}
	}
	if (*Callbacks)(nil).Allows("http://127.0.0.1:9000/") {
		t.Error("a nil allow-list allows")
	}
}
