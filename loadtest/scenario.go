package loadtest

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// A Step is one stretch of a scenario: the rate goes linearly from From to
// To requests per second over For. From == To is a constant rate; 0 is a
// pause.
type Step struct {
	From, To float64
	For      time.Duration
}

// ScenarioPacer runs Steps one after the other; after the last one the
// rate is 0. Its Hits are exact: each step is a constant or a ramp.
type ScenarioPacer struct {
	Name  string // the file it came from, for reports
	Steps []Step
}

// Duration is the length of the scenario: the sum of its steps.
func (p ScenarioPacer) Duration() time.Duration {
	var d time.Duration
	for _, s := range p.Steps {
		d += s.For
	}
	return d
}

func (p ScenarioPacer) Rate(t time.Duration) float64 {
	if t < 0 {
		return 0
	}
	for _, s := range p.Steps {
		if t < s.For {
			return s.From + (s.To-s.From)*t.Seconds()/s.For.Seconds()
		}
		t -= s.For
	}
	return 0
}

func (p ScenarioPacer) integral(t time.Duration) float64 {
	sum := 0.0
	for _, s := range p.Steps {
		if t <= 0 {
			break
		}
		in := min(t, s.For)
		sum += RampPacer{From: s.From, To: s.To, Over: s.For}.integral(in)
		t -= in
	}
	return sum
}

func (p ScenarioPacer) String() string {
	name := p.Name
	if name == "" {
		name = "scenario"
	} else {
		name = "scenario " + name
	}
	return fmt.Sprintf("%s: %d steps over %v", name, len(p.Steps), p.Duration())
}

// maxScenarioSteps bounds a scenario; the pacer walks the steps on every
// wake of the generator.
const maxScenarioSteps = 1000

// LoadScenario reads a scenario file; see ParseScenario.
func LoadScenario(path string) (ScenarioPacer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ScenarioPacer{}, fmt.Errorf("scenario: %w", err)
	}
	return ParseScenario(path, data)
}

// ParseScenario parses a scenario: a YAML list of steps, each a constant
// rate, a pause or a linear ramp, held for a duration:
//
//   - { rate: 100, for: 5s }            # 100 requests/s for 5 s
//   - { from: 100, to: 2000, for: 10s } # a ramp
//   - { rate: 2000, for: 30s }
//   - { rate: 0, for: 5s }              # a pause
//
// Rates are requests per second (a number, or "100/s", "600/m"); "for" is
// a Go duration. Every problem is reported, each as "name:line: field:
// what is wrong".
func ParseScenario(name string, data []byte) (ScenarioPacer, error) {
	p := ScenarioPacer{Name: name}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return p, fmt.Errorf("%s: %w", name, err)
	}
	var errs []error
	fail := func(n *yaml.Node, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", name, n.Line, field, fmt.Sprintf(format, args...)))
	}
	if len(doc.Content) == 0 {
		return p, fmt.Errorf("%s: empty scenario: want a list of steps such as - { rate: 100, for: 5s }", name)
	}
	list := doc.Content[0]
	if list.Kind != yaml.SequenceNode {
		return p, fmt.Errorf("%s:%d: want a list of steps such as - { rate: 100, for: 5s }", name, list.Line)
	}
	if len(list.Content) == 0 {
		return p, fmt.Errorf("%s:%d: no steps", name, list.Line)
	}
	if len(list.Content) > maxScenarioSteps {
		return p, fmt.Errorf("%s:%d: %d steps, at most %d", name, list.Line, len(list.Content), maxScenarioSteps)
	}
	for i, n := range list.Content {
		field := fmt.Sprintf("steps[%d]", i)
		if n.Kind != yaml.MappingNode {
			fail(n, field, "want a step such as { rate: 100, for: 5s } or { from: 10, to: 100, for: 30s }")
			continue
		}
		var rate, from, to, dur *yaml.Node
		for k := 0; k+1 < len(n.Content); k += 2 {
			key, val := n.Content[k], n.Content[k+1]
			switch key.Value {
			case "rate":
				rate = val
			case "from":
				from = val
			case "to":
				to = val
			case "for":
				dur = val
			default:
				fail(key, field, "unknown key %q; a step has rate, or from and to, and for", key.Value)
			}
		}
		var s Step
		ok := true
		parse := func(v *yaml.Node, key string) float64 {
			r, err := parseRate(v)
			if err != nil {
				fail(v, field+"."+key, "%v", err)
				ok = false
			}
			return r
		}
		switch {
		case rate != nil && (from != nil || to != nil):
			fail(n, field, "rate and from/to together: a step is either a constant rate or a ramp")
			ok = false
		case rate != nil:
			s.From = parse(rate, "rate")
			s.To = s.From
		case from != nil && to != nil:
			s.From, s.To = parse(from, "from"), parse(to, "to")
		case from != nil || to != nil:
			fail(n, field, "a ramp needs both from and to")
			ok = false
		default:
			fail(n, field, "no rate: want rate, or from and to")
			ok = false
		}
		if dur == nil {
			fail(n, field+".for", "missing: want a duration such as 5s")
			ok = false
		} else if d, err := time.ParseDuration(dur.Value); err != nil || d <= 0 || dur.Kind != yaml.ScalarNode {
			fail(dur, field+".for", "want a positive duration such as 5s or 500ms, got %q", dur.Value)
			ok = false
		} else {
			s.For = d
		}
		if ok {
			p.Steps = append(p.Steps, s)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return ScenarioPacer{Name: name}, err
	}
	return p, nil
}

// parseRate reads requests per second: 100, 2.5, "100/s", "600/m", "3600/h".
func parseRate(n *yaml.Node) (float64, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, errors.New("want a rate such as 100 or 100/s")
	}
	s, per := n.Value, 1.0
	for suffix, secs := range map[string]float64{"/s": 1, "/m": 60, "/h": 3600} {
		if v, ok := strings.CutSuffix(s, suffix); ok {
			s, per = v, secs
			break
		}
	}
	r, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
		return 0, fmt.Errorf("want a rate of 0 or more requests per second such as 100 or 100/s, got %q", n.Value)
	}
	return r / per, nil
}
