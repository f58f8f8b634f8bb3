package loadtest

import (
	"reflect"
	"testing"
	"time"
)

func TestSeries(t *testing.T) {
	var s Series
	s.Add(time.Time{}, 5)                 // ignored
	s.Add(at(1500), 1)                    // second 1
	s.Add(at(3999), 2)                    // second 3
	s.Add(at(200), 1)                     // second 0: before Start, extends back
	s.Add(at(1000), 1)                    // second 1
	s.Add(at(0).Add(100*24*time.Hour), 1) // beyond maxSeriesLen: ignored

	if !s.Start.Equal(t0) {
		t.Errorf("Start = %v, want %v", s.Start, t0)
	}
	if want := []int{1, 2, 0, 2}; !reflect.DeepEqual(s.Counts, want) {
		t.Errorf("Counts = %v, want %v", s.Counts, want)
	}
	if s.Max() != 2 || s.Total() != 5 {
		t.Errorf("Max %d Total %d, want 2 5", s.Max(), s.Total())
	}
	if s.At(at(1999)) != 2 || s.At(at(-1)) != 0 || s.At(at(4000)) != 0 {
		t.Errorf("At: %d %d %d, want 2 0 0", s.At(at(1999)), s.At(at(-1)), s.At(at(4000)))
	}
	c := s.clone()
	c.Counts[0] = 99
	if s.Counts[0] != 1 {
		t.Error("clone shares Counts")
	}
}
