package policies

import (
	"slices"
	"time"
)

// RateAt returns the rate in force at instant now: the rate of the first window, in list
// order, that contains now (read on the wall clock of t.Timezone), or t.Rate outside every
// window. A window that crosses midnight belongs to the day it starts on: between
// "22:00-06:00" with days [sat] holds from Saturday 22:00 to Sunday 06:00.
func (t *Target) RateAt(now time.Time) Rate {
	local := now.In(t.location())
	minute := local.Hour()*60 + local.Minute()
	day := local.Weekday()
	for i := range t.Windows {
		if t.Windows[i].contains(minute, day) {
			return t.Windows[i].Rate
		}
	}
	return t.Rate
}

// contains reports whether the window holds wall-clock minute of day on weekday day.
func (w *Window) contains(minute int, day time.Weekday) bool {
	switch {
	case !w.HasBetween:
		return w.on(day)
	case w.From < w.To:
		return w.From <= minute && minute < w.To && w.on(day)
	case minute >= w.From:
		return w.on(day)
	case minute < w.To:
		return w.on((day + 6) % 7) // the early hours belong to the day before
	}
	return false
}

func (w *Window) on(day time.Weekday) bool {
	return len(w.Days) == 0 || slices.Contains(w.Days, day)
}

// changeHorizon bounds NextChange's search. Windows repeat every week, so a rate that has
// not changed after eight days of boundaries never changes.
const changeHorizon = 8 * 24 * time.Hour

// NextChange returns the earliest instant after now at which RateAt returns a value
// different from RateAt(now), so that a drainer can switch rate exactly at a window
// boundary. It returns the zero time if t has no windows. If the rate does not change
// within eight days, it returns an instant about eight days ahead, at which the caller
// should simply ask again.
//
// Boundaries are found on the wall clock: within one zone offset (between two daylight
// saving transitions) wall time and instants move together, so the next boundary is the
// next minute of day named by a window, or the next transition, whichever comes first.
// This finds the exact instant even when the clock jumps over or repeats a boundary.
func (t *Target) NextChange(now time.Time) time.Time {
	if len(t.Windows) == 0 {
		return time.Time{}
	}
	loc := t.location()
	minutes := []int{0} // midnight: days change there
	for _, w := range t.Windows {
		if w.HasBetween {
			minutes = append(minutes, w.From, w.To)
		}
	}
	slices.Sort(minutes)
	minutes = slices.Compact(minutes)

	current := t.RateAt(now)
	at := now.In(loc)
	for at.Sub(now) < changeHorizon {
		at = nextBoundary(at, minutes)
		if t.RateAt(at) != current {
			return at
		}
	}
	return at
}

// nextBoundary returns the first instant after at whose wall clock shows one of minutes
// (sorted minutes of day), or the end of at's zone offset if that comes first.
func nextBoundary(at time.Time, minutes []int) time.Time {
	_, offset := at.Zone()
	shift := time.Duration(offset) * time.Second
	wall := at.UTC().Add(shift) // at's wall clock, read as if it were UTC
	midnight := time.Date(wall.Year(), wall.Month(), wall.Day(), 0, 0, 0, 0, time.UTC)
	next := midnight.AddDate(0, 0, 1) // minutes[0] is 0: tomorrow's midnight
	for _, m := range minutes {
		if b := midnight.Add(time.Duration(m) * time.Minute); b.After(wall) {
			next = b
			break
		}
	}
	instant := next.Add(-shift).In(at.Location())
	if _, end := at.ZoneBounds(); !end.IsZero() && end.Before(instant) {
		return end.In(at.Location())
	}
	return instant
}

func (t *Target) location() *time.Location {
	if t.Timezone == nil {
		return time.UTC
	}
	return t.Timezone
}
