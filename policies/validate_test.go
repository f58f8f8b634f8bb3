package policies

import (
	"errors"
	"strings"
	"testing"
)

// Target.Validate finds every combination that cannot work, and the parser
// reports exactly what Validate says, at the key's line: one check, one
// wording, whether the target comes from a file or from code.
func TestTargetValidate(t *testing.T) {
	key := KeySource{Header: "X-Customer"}
	batch := &Batch{MaxMessages: 10}
	for _, c := range []struct {
		name   string
		yaml   string // the target's extra keys in a policy file; "" = not expressible there
		target Target
		want   []string // Field: Msg prefixes, in order
	}{
		{"plain", "", Target{}, nil},
		{"capture with batch", "capture_response: {}\n        batch: {}", Target{CaptureResponse: &Capture{}, Batch: batch},
			[]string{"capture_response: capture_response keeps one message's answer"}},
		{"ordering with batch", "ordering: { key: header:X-Customer }\n        batch: {}", Target{Ordering: &Ordering{Key: key}, Batch: batch},
			[]string{"ordering: ordering sends one message per key at a time"}},
		{"fairness with ordering", "ordering: { key: header:X-Customer }\n        fairness: { key: header:X-Customer }", Target{Ordering: &Ordering{Key: key}, Fairness: &Fairness{Key: key}},
			[]string{"fairness: fairness cannot be combined with ordering"}},
		{"fairness with batch", "fairness: { key: header:X-Customer }\n        batch: {}", Target{Fairness: &Fairness{Key: key}, Batch: batch},
			[]string{"fairness: fairness cannot be combined with batch"}},
		{"all three", "ordering: { key: header:X-Customer }\n        fairness: { key: header:X-Customer }\n        batch: {}", Target{Ordering: &Ordering{Key: key}, Fairness: &Fairness{Key: key}, Batch: batch},
			[]string{"ordering: ordering sends one message", "fairness: fairness cannot be combined with ordering", "fairness: fairness cannot be combined with batch"}},
		{"ordering without key", "", Target{Ordering: &Ordering{}}, []string{"ordering.key: ordering needs a key"}},
		{"fairness without key", "", Target{Fairness: &Fairness{}}, []string{"fairness.key: fairness needs a key"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			errs := c.target.Validate()
			if len(errs) != len(c.want) {
				t.Fatalf("Validate: %v, want %d problems", errs, len(c.want))
			}
			for i, e := range errs {
				if got := e.Field + ": " + e.Msg; !strings.HasPrefix(got, c.want[i]) {
					t.Errorf("problem %d: %q, want %q...", i, got, c.want[i])
				}
			}
			if c.yaml == "" {
				return
			}
			src := "routes:\n  - name: orders\n    match: { path: /o }\n    targets:\n      - name: inv\n        url: http://127.0.0.1:8081\n        " + c.yaml + "\n"
			_, err := Parse("p.yaml", []byte(src))
			var perrs Errors
			if !errors.As(err, &perrs) || len(perrs) != len(c.want) {
				t.Fatalf("Parse: %v, want %d problems", err, len(c.want))
			}
			for i, e := range perrs {
				want := errs[i]
				if e.Field != "routes[0].targets[0]."+want.Field || e.Msg != want.Msg || e.Line < 7 {
					t.Errorf("parser: %s; Validate: %s: %s (line >= 7)", e, want.Field, want.Msg)
				}
			}
		})
	}
}
