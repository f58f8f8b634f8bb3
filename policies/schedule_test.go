package policies

import (
	"testing"
	"time"
)

func rate(n float64) Rate { return Rate{PerSecond: n} }

func loadLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func between(from, to string, r Rate, days ...time.Weekday) Window {
	span, err := parseBetween(from + "-" + to)
	if err != nil {
		panic(err)
	}
	return Window{From: span[0], To: span[1], HasBetween: true, Days: days, Rate: r}
}

func onDays(r Rate, days ...time.Weekday) Window { return Window{Days: days, Rate: r} }

// at is a wall-clock time in loc.
func at(loc *time.Location, y int, mo time.Month, d, h, mi int) time.Time {
	return time.Date(y, mo, d, h, mi, 0, 0, loc)
}

type scheduleCase struct {
	name string
	now  time.Time
	rate Rate      // RateAt(now)
	next time.Time // NextChange(now)
}

func runSchedule(t *testing.T, tg *Target, cases []scheduleCase) {
	t.Helper()
	for _, c := range cases {
		if got := tg.RateAt(c.now); got != c.rate {
			t.Errorf("%s: RateAt(%v) = %v, want %v", c.name, c.now, got, c.rate)
		}
		if got := tg.NextChange(c.now); !got.Equal(c.next) {
			t.Errorf("%s: NextChange(%v) = %v, want %v", c.name, c.now, got, c.next)
		}
	}
}

// 2025-03-01 is a Saturday.

func TestScheduleMidnightCrossing(t *testing.T) {
	u := time.UTC
	tg := &Target{Rate: rate(100), Windows: []Window{between("22:00", "06:00", rate(2000))}}
	runSchedule(t, tg, []scheduleCase{
		{"before", at(u, 2025, 3, 3, 21, 0), rate(100), at(u, 2025, 3, 3, 22, 0)},
		{"last second before", at(u, 2025, 3, 3, 21, 59).Add(59 * time.Second), rate(100), at(u, 2025, 3, 3, 22, 0)},
		{"start", at(u, 2025, 3, 3, 22, 0), rate(2000), at(u, 2025, 3, 4, 6, 0)},
		{"after midnight", at(u, 2025, 3, 4, 2, 0), rate(2000), at(u, 2025, 3, 4, 6, 0)},
		{"end", at(u, 2025, 3, 4, 6, 0), rate(100), at(u, 2025, 3, 4, 22, 0)},
	})
}

func TestScheduleDays(t *testing.T) {
	u := time.UTC
	// Saturday night into Sunday morning belongs to Saturday.
	tg := &Target{Rate: rate(100), Windows: []Window{between("22:00", "06:00", rate(2000), time.Saturday)}}
	runSchedule(t, tg, []scheduleCase{
		{"friday night", at(u, 2025, 2, 28, 23, 0), rate(100), at(u, 2025, 3, 1, 22, 0)},
		{"saturday early hours belong to friday", at(u, 2025, 3, 1, 3, 0), rate(100), at(u, 2025, 3, 1, 22, 0)},
		{"saturday night", at(u, 2025, 3, 1, 22, 0), rate(2000), at(u, 2025, 3, 2, 6, 0)},
		{"sunday early hours", at(u, 2025, 3, 2, 5, 59), rate(2000), at(u, 2025, 3, 2, 6, 0)},
		{"sunday night", at(u, 2025, 3, 2, 22, 0), rate(100), at(u, 2025, 3, 8, 22, 0)},
	})

	// Whole days: Saturday 00:00 to Monday 00:00; the midnight inside is no change.
	tg = &Target{Rate: rate(100), Windows: []Window{onDays(rate(5), time.Saturday, time.Sunday)}}
	runSchedule(t, tg, []scheduleCase{
		{"friday", at(u, 2025, 2, 28, 10, 0), rate(100), at(u, 2025, 3, 1, 0, 0)},
		{"saturday", at(u, 2025, 3, 1, 10, 0), rate(5), at(u, 2025, 3, 3, 0, 0)},
		{"sunday", at(u, 2025, 3, 2, 23, 59), rate(5), at(u, 2025, 3, 3, 0, 0)},
		{"monday", at(u, 2025, 3, 3, 0, 0), rate(100), at(u, 2025, 3, 8, 0, 0)},
	})
}

func TestScheduleFirstMatchWins(t *testing.T) {
	u := time.UTC
	// PRODUCT.md's windows.
	tg := &Target{Rate: rate(200), Windows: []Window{
		between("22:00", "06:00", rate(2000)),
		onDays(rate(1000), time.Saturday, time.Sunday),
		between("10:00", "12:00", Rate{}),
	}}
	runSchedule(t, tg, []scheduleCase{
		{"saturday night: first window", at(u, 2025, 3, 1, 23, 0), rate(2000), at(u, 2025, 3, 2, 6, 0)},
		{"saturday 11:00: second beats third", at(u, 2025, 3, 1, 11, 0), rate(1000), at(u, 2025, 3, 1, 22, 0)},
		{"monday 11:00: paused", at(u, 2025, 3, 3, 11, 0), Rate{}, at(u, 2025, 3, 3, 12, 0)},
		{"monday 09:00: outside all", at(u, 2025, 3, 3, 9, 0), rate(200), at(u, 2025, 3, 3, 10, 0)},
		{"friday 12:00 to friday 22:00", at(u, 2025, 2, 28, 12, 0), rate(200), at(u, 2025, 2, 28, 22, 0)},
		{"sunday 06:00 is weekend", at(u, 2025, 3, 2, 6, 0), rate(1000), at(u, 2025, 3, 2, 22, 0)},
	})

	// A boundary where the rate stays the same is skipped: the night window has the base
	// rate and shadows the start of the Saturday window.
	tg = &Target{Rate: rate(100), Windows: []Window{
		between("22:00", "06:00", rate(100)),
		onDays(rate(5), time.Saturday),
	}}
	runSchedule(t, tg, []scheduleCase{
		{"wednesday to saturday 06:00", at(u, 2025, 2, 26, 12, 0), rate(100), at(u, 2025, 3, 1, 6, 0)},
	})
}

func TestScheduleAsiaShanghai(t *testing.T) {
	sh := loadLoc(t, "Asia/Shanghai") // UTC+8, no daylight saving
	u := time.UTC
	tg := &Target{Rate: rate(200), Timezone: sh, Windows: []Window{
		between("22:00", "06:00", rate(2000)),
		onDays(rate(1000), time.Saturday),
	}}
	runSchedule(t, tg, []scheduleCase{
		{"13:59 UTC is 21:59 in Shanghai", at(u, 2025, 3, 3, 13, 59), rate(200), at(u, 2025, 3, 3, 14, 0)},
		{"14:00 UTC is 22:00 in Shanghai", at(u, 2025, 3, 3, 14, 0), rate(2000), at(u, 2025, 3, 3, 22, 0)},
		{"22:00 UTC is 06:00 in Shanghai", at(u, 2025, 3, 3, 22, 0), rate(200), at(u, 2025, 3, 4, 14, 0)},
		// Friday 22:00 UTC is Saturday 06:00 in Shanghai: Saturday, after the night window.
		{"saturday in Shanghai, friday in UTC", at(u, 2025, 2, 28, 22, 0), rate(1000), at(u, 2025, 3, 1, 14, 0)},
	})
}

func TestScheduleDSTBerlin(t *testing.T) {
	b := loadLoc(t, "Europe/Berlin")
	u := time.UTC
	// 2025-03-30: at 01:00 UTC, clocks go from 02:00 CET to 03:00 CEST.
	tg := &Target{Rate: rate(100), Timezone: b, Windows: []Window{between("01:00", "03:00", rate(7))}}
	runSchedule(t, tg, []scheduleCase{
		{"window opens at 01:00 CET", at(u, 2025, 3, 29, 23, 0), rate(100), at(u, 2025, 3, 30, 0, 0)},
		{"and closes after one real hour", at(u, 2025, 3, 30, 0, 30), rate(7), at(u, 2025, 3, 30, 1, 0)},
		{"next night 01:00 CEST", at(u, 2025, 3, 30, 1, 0), rate(100), at(u, 2025, 3, 30, 23, 0)},
	})

	// A window that starts inside the skipped hour starts when the clock jumps over it.
	tg = &Target{Rate: rate(100), Timezone: b, Windows: []Window{between("02:30", "05:00", rate(7))}}
	runSchedule(t, tg, []scheduleCase{
		{"02:30 does not exist", at(u, 2025, 3, 30, 0, 30), rate(100), at(u, 2025, 3, 30, 1, 0)},
		{"inside", at(u, 2025, 3, 30, 1, 0), rate(7), at(u, 2025, 3, 30, 3, 0)},
	})

	// 2025-10-26: at 01:00 UTC, clocks go back from 03:00 CEST to 02:00 CET, so wall
	// times 02:00-03:00 happen twice and the window is entered twice.
	runSchedule(t, tg, []scheduleCase{
		{"02:30 CEST", at(u, 2025, 10, 26, 0, 0), rate(100), at(u, 2025, 10, 26, 0, 30)},
		{"back to 02:00 CET", at(u, 2025, 10, 26, 0, 30), rate(7), at(u, 2025, 10, 26, 1, 0)},
		{"02:30 CET", at(u, 2025, 10, 26, 1, 0), rate(100), at(u, 2025, 10, 26, 1, 30)},
		{"05:00 CET", at(u, 2025, 10, 26, 1, 30), rate(7), at(u, 2025, 10, 26, 4, 0)},
	})

	// A daily window keeps its wall-clock time: 22:00 is 21:00 UTC before the change and
	// 20:00 UTC after it (adding 24h would get this wrong).
	tg = &Target{Rate: rate(100), Timezone: b, Windows: []Window{between("22:00", "06:00", rate(7))}}
	runSchedule(t, tg, []scheduleCase{
		{"saturday 22:00 CET", at(u, 2025, 3, 29, 12, 0), rate(100), at(u, 2025, 3, 29, 21, 0)},
		{"sunday 06:00 CEST", at(u, 2025, 3, 29, 21, 0), rate(7), at(u, 2025, 3, 30, 4, 0)},
		{"sunday 22:00 CEST", at(u, 2025, 3, 30, 4, 0), rate(100), at(u, 2025, 3, 30, 20, 0)},
	})
}

func TestScheduleDSTNewYork(t *testing.T) {
	ny := loadLoc(t, "America/New_York")
	u := time.UTC
	// 2025-03-09: at 07:00 UTC, clocks go from 02:00 EST to 03:00 EDT.
	tg := &Target{Rate: rate(100), Timezone: ny, Windows: []Window{between("01:00", "03:00", Rate{}, time.Sunday)}}
	runSchedule(t, tg, []scheduleCase{
		{"saturday night", at(u, 2025, 3, 9, 5, 0), rate(100), at(u, 2025, 3, 9, 6, 0)},
		{"paused one real hour", at(u, 2025, 3, 9, 6, 0), Rate{}, at(u, 2025, 3, 9, 7, 0)},
		{"next sunday 01:00 EDT", at(u, 2025, 3, 9, 7, 0), rate(100), at(u, 2025, 3, 16, 5, 0)},
	})
}

func TestScheduleNoWindows(t *testing.T) {
	tg := &Target{Rate: rate(3)} // nil Timezone reads as UTC
	now := at(time.UTC, 2025, 3, 3, 12, 0)
	if got := tg.RateAt(now); got != rate(3) {
		t.Errorf("RateAt = %v", got)
	}
	if got := tg.NextChange(now); !got.IsZero() {
		t.Errorf("NextChange = %v, want zero", got)
	}
}

func TestScheduleNoChange(t *testing.T) {
	// Windows that never change the rate: NextChange gives a time to ask again, about
	// eight days ahead, and the rate there is the same.
	tg := &Target{Rate: rate(3), Windows: []Window{between("01:00", "02:00", rate(3)), onDays(rate(3), time.Monday)}}
	now := at(time.UTC, 2025, 3, 3, 12, 0)
	next := tg.NextChange(now)
	if d := next.Sub(now); d < 7*24*time.Hour || d > 9*24*time.Hour || tg.RateAt(next) != rate(3) {
		t.Errorf("NextChange = %v (after %v), rate there %v", next, d, tg.RateAt(next))
	}
}

// TestNextChangeAgreesWithRateAt walks minute by minute through weeks with daylight
// saving changes, in zones with odd offsets too, and checks at every minute that
// NextChange names exactly the next minute at which RateAt changes.
func TestNextChangeAgreesWithRateAt(t *testing.T) {
	windows := []Window{
		between("22:00", "06:00", rate(1), time.Saturday),
		between("02:30", "05:00", rate(2)),
		onDays(rate(3), time.Sunday),
		between("01:00", "03:00", rate(4), time.Monday, time.Tuesday),
		between("00:00", "00:15", rate(5)),
	}
	spans := [][2]time.Time{
		{at(time.UTC, 2025, 3, 1, 0, 0), at(time.UTC, 2025, 4, 10, 0, 0)},
		{at(time.UTC, 2025, 10, 1, 0, 0), at(time.UTC, 2025, 11, 5, 0, 0)},
	}
	if testing.Short() {
		spans = spans[:1]
	}
	for _, zone := range []string{"UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai", "Asia/Kolkata", "Australia/Lord_Howe"} {
		tg := &Target{Rate: rate(100), Timezone: loadLoc(t, zone), Windows: windows}
		for _, span := range spans {
			start := span[0]
			next := tg.NextChange(start)
			cur := tg.RateAt(start)
			for now := start; now.Before(span[1]); now = now.Add(time.Minute) {
				if !now.Before(next) {
					if r := tg.RateAt(next); r == cur {
						t.Fatalf("%s: rate %v did not change at NextChange %v", zone, r, next)
					}
					if !now.Equal(next) {
						t.Fatalf("%s: NextChange %v is not on a minute", zone, next)
					}
					cur, next = tg.RateAt(now), tg.NextChange(now)
					continue
				}
				if r := tg.RateAt(now); r != cur {
					t.Fatalf("%s: rate changed to %v at %v (%v), before NextChange %v", zone, r, now, now.In(tg.Timezone), next)
				}
				if got := tg.NextChange(now); !got.Equal(next) {
					t.Fatalf("%s: NextChange(%v) = %v, want %v", zone, now, got, next)
				}
			}
		}
	}
}
