package loadtest

import "time"

// Series counts events per wall-clock second: Counts[i] is the number of
// events in [Start+i s, Start+i+1 s). Start is a whole second.
type Series struct {
	Start  time.Time `json:"start"`
	Counts []int     `json:"counts"`
}

// maxSeriesLen bounds a Series at 31 days of seconds, so that an absurd
// timestamp cannot allocate gigabytes; such events are ignored.
const maxSeriesLen = 31 * 24 * 3600

// Add counts n events at t; a zero t is ignored. Events may come out of
// order (results of concurrent requests do), so a t before Start extends
// the series back.
func (s *Series) Add(t time.Time, n int) {
	if t.IsZero() {
		return
	}
	sec := t.Unix()
	if len(s.Counts) == 0 {
		s.Start = time.Unix(sec, 0)
		s.Counts = append(s.Counts, n)
		return
	}
	i := sec - s.Start.Unix()
	switch {
	case i < 0:
		if int64(len(s.Counts))-i > maxSeriesLen {
			return
		}
		grown := make([]int, int(-i)+len(s.Counts))
		copy(grown[-i:], s.Counts)
		s.Counts, s.Start = grown, time.Unix(sec, 0)
		i = 0
	case i >= int64(len(s.Counts)):
		if i >= maxSeriesLen {
			return
		}
		s.Counts = append(s.Counts, make([]int, int(i)+1-len(s.Counts))...)
	}
	s.Counts[i] += n
}

// Max returns the largest count in one second.
func (s Series) Max() int {
	m := 0
	for _, c := range s.Counts {
		m = max(m, c)
	}
	return m
}

// Total returns the sum of all counts.
func (s Series) Total() int {
	n := 0
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// At returns the count in the second that contains t, 0 outside the series.
func (s Series) At(t time.Time) int {
	i := t.Unix() - s.Start.Unix()
	if len(s.Counts) == 0 || i < 0 || i >= int64(len(s.Counts)) {
		return 0
	}
	return s.Counts[i]
}

func (s Series) clone() Series {
	s.Counts = append([]int(nil), s.Counts...)
	return s
}
