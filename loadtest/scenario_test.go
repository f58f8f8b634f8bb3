package loadtest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const goodScenario = `# a flash sale
- { rate: 100, for: 2s }
- { from: 100, to: 1000, for: 2s }   # ramp up
- rate: 1000/s
  for: 1s
- { rate: 0, for: 500ms }            # pause
- { rate: 600/m, for: 1s }
`

func TestParseScenario(t *testing.T) {
	p, err := ParseScenario("sale.yaml", []byte(goodScenario))
	if err != nil {
		t.Fatal(err)
	}
	want := []Step{
		{From: 100, To: 100, For: 2 * time.Second},
		{From: 100, To: 1000, For: 2 * time.Second},
		{From: 1000, To: 1000, For: time.Second},
		{From: 0, To: 0, For: 500 * time.Millisecond},
		{From: 10, To: 10, For: time.Second},
	}
	if !reflect.DeepEqual(p.Steps, want) {
		t.Errorf("Steps = %+v\nwant %+v", p.Steps, want)
	}
	if d := p.Duration(); d != 6500*time.Millisecond {
		t.Errorf("Duration = %v", d)
	}
	if s := p.String(); s != "scenario sale.yaml: 5 steps over 6.5s" {
		t.Errorf("String = %q", s)
	}
}

// Hits against a fake clock: the schedule is the sum of the steps'
// integrals, exactly.
func TestScenarioHits(t *testing.T) {
	p, err := ParseScenario("sale.yaml", []byte(goodScenario))
	if err != nil {
		t.Fatal(err)
	}
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tt := range []struct {
		at   time.Duration
		want uint64
		rate float64
	}{
		{0, 0, 100},
		{ms(10), 1, 100},
		{ms(2000), 200, 100},                   // end of step 1
		{ms(3000), 200 + 100 + 450/2 + 0, 550}, // half the ramp: 100*1 + 900*1*1/(2*2)
		{ms(4000), 200 + 1100, 1000},           // the whole ramp: (100+1000)/2*2
		{ms(5000), 2300, 0},                    // 1000/s for 1s; then the pause
		{ms(5500), 2300, 10},                   // the pause sent nothing
		{ms(6500), 2310, 0},                    // 10/s for 1s, then the end
		{time.Hour, 2310, 0},                   // nothing after the end
	} {
		if got := Hits(p, tt.at); got != tt.want {
			t.Errorf("Hits(%v) = %d, want %d", tt.at, got, tt.want)
		}
		if got := p.Rate(tt.at); got != tt.rate {
			t.Errorf("Rate(%v) = %g, want %g", tt.at, got, tt.rate)
		}
	}
}

func TestParseScenarioErrors(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		want      []string
	}{
		{"empty", "", []string{"f.yaml: empty scenario"}},
		{"not a list", "rate: 100\n", []string{"f.yaml:1: want a list of steps"}},
		{"no steps", "[]\n", []string{"f.yaml:1: no steps"}},
		{"bad yaml", "- { rate: 100\n", []string{"f.yaml: yaml:"}},
		{"all problems, with lines", `- { rate: 100, for: 1s }
- { rate: fast, for: 1s }
- { rate: -5, for: 1s }
- { rate: 1, for: soon }
- { rate: 1 }
- { from: 1, for: 1s }
- { rate: 1, from: 1, to: 2, for: 1s }
- { rat: 1, for: 1s }
- 7
- { rate: 1, for: -1s }
`, []string{
			`f.yaml:2: steps[1].rate: want a rate of 0 or more requests per second such as 100 or 100/s, got "fast"`,
			`f.yaml:3: steps[2].rate: want a rate of 0 or more`,
			`f.yaml:4: steps[3].for: want a positive duration such as 5s or 500ms, got "soon"`,
			`f.yaml:5: steps[4].for: missing`,
			`f.yaml:6: steps[5]: a ramp needs both from and to`,
			`f.yaml:7: steps[6]: rate and from/to together`,
			`f.yaml:8: steps[7]: unknown key "rat"`,
			`f.yaml:8: steps[7]: no rate`,
			`f.yaml:9: steps[8]: want a step`,
			`f.yaml:10: steps[9].for: want a positive duration`,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseScenario("f.yaml", []byte(tt.src))
			if err == nil {
				t.Fatalf("no error; steps %+v", p.Steps)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if p.Steps != nil {
				t.Errorf("steps returned with an error: %+v", p.Steps)
			}
		})
	}
}

func TestLoadScenario(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(path, []byte(goodScenario), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := LoadScenario(path); err != nil || len(p.Steps) != 5 || p.Name != path {
		t.Errorf("LoadScenario: %v %+v", err, p)
	}
	if _, err := LoadScenario(path + ".missing"); err == nil || !strings.Contains(err.Error(), "s.yaml.missing") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParseScenario(f *testing.F) {
	f.Add(goodScenario)
	f.Add("- { rate: 1e308, for: 2562047h }\n- { from: 0, to: 1e9, for: 1ns }\n")
	f.Add("- [1, 2]\n- { for: { a: 1 } }\n")
	f.Fuzz(func(t *testing.T, src string) {
		p, err := ParseScenario("fuzz.yaml", []byte(src))
		if err != nil {
			return
		}
		for _, s := range p.Steps {
			if s.For <= 0 || s.From < 0 || s.To < 0 {
				t.Fatalf("accepted a bad step %+v", s)
			}
		}
		// Hits must not panic, and never decreases.
		a, b := Hits(p, p.Duration()/2), Hits(p, p.Duration())
		if b < a {
			t.Fatalf("Hits went down: %d then %d", a, b)
		}
	})
}
