package policies

import (
	"reflect"
	"testing"
)

// A target built in code and given WithDefaults gets what the parser gives
// a policy file's target that sets nothing: one set of defaults.
func TestWithDefaultsMatchesParser(t *testing.T) {
	pol, err := Parse("p.yaml", []byte(`routes:
  - name: orders
    match: { path: /api/orders }
    targets:
      - { name: inv, url: "http://127.0.0.1:8081", rate: 200/s }
`))
	if err != nil {
		t.Fatal(err)
	}
	parsed := pol.Routes[0].Targets[0]
	built := Target{Name: parsed.Name, URL: parsed.URL, Rate: parsed.Rate, Protocol: parsed.Protocol, Line: parsed.Line}.WithDefaults()
	for _, f := range []string{"Concurrency", "Timeout", "Burst", "Timezone", "Retry", "Breaker"} {
		a := reflect.ValueOf(parsed).FieldByName(f).Interface()
		b := reflect.ValueOf(built).FieldByName(f).Interface()
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: parsed %v, WithDefaults %v", f, a, b)
		}
	}
}
