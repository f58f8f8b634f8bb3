package policies

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxRate is the highest finite rate a policy may set, in requests per second.
const MaxRate = 1e9

// Rate is a delivery rate in requests per second: "200/s", "10/m", "3600/h",
// "0" (paused) or "unlimited".
type Rate struct {
	PerSecond float64 // >= 0; meaningless when Unlimited
	Unlimited bool
}

// unlimited is the rate of a target that sets none.
var unlimited = Rate{Unlimited: true}

var rateUnits = []struct {
	unit    string
	seconds float64
}{{"s", 1}, {"m", 60}, {"h", 3600}}

// ParseRate parses "N/s", "N/m", "N/h" (N a decimal number such as 200 or 0.5),
// "0" and "unlimited".
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "unlimited":
		return unlimited, nil
	case "0":
		return Rate{}, nil
	}
	bad := fmt.Errorf("invalid rate %q: expected N/s, N/m, N/h, 0 or unlimited", s)
	num, unit, ok := strings.Cut(s, "/")
	num, unit = strings.TrimSpace(num), strings.ToLower(strings.TrimSpace(unit))
	if !ok {
		return Rate{}, bad
	}
	if strings.HasPrefix(num, "-") {
		return Rate{}, fmt.Errorf("invalid rate %q: must not be negative", s)
	}
	if !isDecimal(num) {
		return Rate{}, bad
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return Rate{}, bad
	}
	for _, u := range rateUnits {
		if u.unit != unit {
			continue
		}
		r := Rate{PerSecond: n / u.seconds}
		if r.PerSecond > MaxRate {
			return Rate{}, fmt.Errorf("invalid rate %q: at most %.0f/s", s, float64(MaxRate))
		}
		return r, nil
	}
	return Rate{}, bad
}

// String returns the rate as a policy file would write it: "unlimited", "0/s",
// or N/s, N/m or N/h with the first unit that makes N a whole number.
func (r Rate) String() string {
	if r.Unlimited {
		return "unlimited"
	}
	for _, u := range rateUnits {
		n := r.PerSecond * u.seconds
		if whole := math.Round(n); math.Abs(n-whole) <= 1e-9*math.Max(1, n) {
			return strconv.FormatFloat(whole, 'f', -1, 64) + "/" + u.unit
		}
	}
	return strconv.FormatFloat(r.PerSecond, 'f', -1, 64) + "/s"
}

// Paused reports whether the rate is zero: nothing is delivered.
func (r Rate) Paused() bool { return !r.Unlimited && r.PerSecond == 0 }

// defaultBurst is max(1, ceil(rate/10)) for a finite rate, else 1.
func defaultBurst(r Rate) int {
	if r.Unlimited {
		return 1
	}
	return max(1, int(math.Ceil(r.PerSecond/10)))
}

// isDecimal reports whether s is digits with at most one inner dot, like 200 or 0.5.
func isDecimal(s string) bool {
	whole, frac, hasDot := strings.Cut(s, ".")
	return allDigits(whole) && (!hasDot || allDigits(frac))
}

func allDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
