package policies

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// testEnv is the environment every testdata file is parsed with.
func testEnv(name string) (string, bool) {
	v, ok := map[string]string{
		"SLUICE_RATE":        "200/s",
		"SLUICE_PORT":        "8081",
		"SLUICE_EMPTY":       "",
		"SLUICE_ADMIN_TOKEN": "0123456789abcdef0123",
	}[name]
	return v, ok
}

// parseFile parses a testdata file with testEnv, naming it by its base name in messages.
func parseFile(t *testing.T, path string) (*Policy, error) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return ParseWith(filepath.Base(path), data, testEnv)
}

// golden compares got with the golden file, or rewrites it with -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run go test -update to accept)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func testFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata in %s: %v", dir, err)
	}
	return files
}

// TestValidFiles parses each testdata/valid file and compares the whole policy, defaults
// included, with its .golden dump.
func TestValidFiles(t *testing.T) {
	for _, file := range testFiles(t, "valid") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			p, err := parseFile(t, file)
			if err != nil {
				t.Fatalf("unexpected error:\n%v", err)
			}
			checkInvariants(t, p)
			golden(t, strings.TrimSuffix(file, ".yaml")+".golden", dump(p))
		})
	}
}

// TestInvalidFiles parses each testdata/invalid file and compares the error text, which
// names file, line and field of every problem, with its .err file.
func TestInvalidFiles(t *testing.T) {
	for _, file := range testFiles(t, "invalid") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			p, err := parseFile(t, file)
			if err == nil {
				t.Fatalf("no error; got policy %+v", p)
			}
			if p != nil {
				t.Errorf("got a policy along with the error")
			}
			var errs *Errors
			if !errors.As(err, &errs) || len(*errs) == 0 {
				t.Fatalf("error is %T, want non-empty *Errors", err)
			}
			for _, e := range *errs {
				if e.File != filepath.Base(file) || e.Msg == "" {
					t.Errorf("incomplete error %#v", e)
				}
			}
			golden(t, strings.TrimSuffix(file, ".yaml")+".err", err.Error()+"\n")
		})
	}
}

// TestFullPolicy spells out what PRODUCT.md's example parses to.
func TestFullPolicy(t *testing.T) {
	p, err := parseFile(t, "testdata/valid/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	want := &Policy{
		File:   "full.yaml",
		Listen: ":8080",
		Admin:  &Admin{Listen: "127.0.0.1:9090", Token: "0123456789abcdef0123", Line: 4},
		Server: Server{ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
			MaxHeaderBytes: 16 << 10, MaxConnections: 10000},
		StatusAPI: StatusAPI{Enabled: true, RedactHeaders: DefaultRedactHeaders},
		Storage: Storage{
			Engine:       "bbolt",
			Dir:          "./data",
			Fsync:        Fsync{Mode: FsyncAlways},
			Retention:    72 * time.Hour,
			MaxBytes:     50 << 30,
			SegmentBytes: 64 << 20,
			Line:         7,
		},
		Routes: []Route{{
			Name:              "orders",
			Match:             Match{Path: "/api/orders", Methods: []string{"POST", "PUT"}},
			Mode:              "buffer",
			IdempotencyHeader: "Idempotency-Key",
			MaxBody:           1 << 20,
			Rate:              Rate{Unlimited: true},
			Burst:             1,
			Protocol:          ProtocolHTTP,
			Line:              13,
			Targets: []Target{{
				Name:        "inventory",
				URL:         mustURL("http://127.0.0.1:8081"),
				Rate:        Rate{PerSecond: 200},
				Burst:       20,
				Concurrency: 16,
				Timeout:     5 * time.Second,
				Timezone:    shanghai,
				Windows: []Window{
					{From: 22 * 60, To: 6 * 60, HasBetween: true, Rate: Rate{PerSecond: 2000}, Line: 27},
					{Days: []time.Weekday{time.Saturday, time.Sunday}, Rate: Rate{PerSecond: 1000}, Line: 28},
					{From: 10 * 60, To: 12 * 60, HasBetween: true, Rate: Rate{}, Line: 29},
				},
				Retry: Retry{MaxAttempts: 12, Initial: 500 * time.Millisecond, Max: 5 * time.Minute,
					On: RetryOn{Codes: map[int]bool{429: true}, Class5xx: true, Timeout: true, Connect: true}},
				Breaker:  Breaker{Failures: 20, Cooldown: 5 * time.Second, MaxCooldown: 5 * time.Minute},
				Protocol: ProtocolHTTP,
				Line:     19,
			}, {
				Name:        "delivery",
				URL:         mustURL("http://127.0.0.1:8082"),
				Rate:        Rate{PerSecond: 50},
				Burst:       5, // ceil(50/10)
				Concurrency: 16,
				Timeout:     10 * time.Second,
				Timezone:    time.UTC,
				Retry: Retry{MaxAttempts: 10, Initial: 500 * time.Millisecond, Max: 5 * time.Minute,
					On: RetryOn{Codes: map[int]bool{408: true, 425: true, 429: true}, Class5xx: true, Timeout: true, Connect: true}},
				Breaker:  Breaker{Failures: 20, Cooldown: 5 * time.Second, MaxCooldown: 5 * time.Minute},
				Protocol: ProtocolHTTP,
				Line:     31,
			}},
		}, {
			Name:     "catalog",
			Match:    Match{Path: "/api/"},
			Mode:     "passthrough",
			MaxBody:  NoBodyLimit,
			Upstream: mustURL("http://127.0.0.1:8081"),
			Rate:     Rate{Unlimited: true},
			Burst:    1,
			Timeout:  DefaultUpstreamTimeout,
			Protocol: ProtocolHTTP,
			Line:     34,
		}},
	}
	if got, want := dump(p), dump(want); got != want {
		t.Errorf("policy differs\n--- got\n%s--- want\n%s", got, want)
	}
	// dump compares time zones by name; check they are real locations too.
	if tz := p.Routes[0].Targets[0].Timezone; tz.String() != "Asia/Shanghai" {
		t.Errorf("timezone %v", tz)
	}
}

func TestExamplePolicyParses(t *testing.T) {
	p, err := Load("../examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, p)
	if p.Listen != ":8080" || p.Storage.Dir != "./data" {
		t.Errorf("listen %q, dir %q; want :8080 and ./data", p.Listen, p.Storage.Dir)
	}
	for _, r := range p.Routes {
		for _, tg := range r.Targets {
			if tg.URL.Hostname() != "127.0.0.1" || (tg.URL.Port() != "8081" && tg.URL.Port() != "8082") {
				t.Errorf("route %s target %s: url %s, want 127.0.0.1:8081 or :8082", r.Name, tg.Name, tg.URL)
			}
		}
	}
}

func TestLoad(t *testing.T) {
	p, err := Load("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.File != "testdata/valid/minimal.yaml" {
		t.Errorf("File = %q", p.File)
	}

	_, err = Load("testdata/no-such-file.yaml")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: got %v, want an error wrapping fs.ErrNotExist", err)
	}
	want := "testdata/no-such-file.yaml: cannot read policy file: no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("missing file: got %q, want %q", err, want)
	}
}

func TestErrorsAs(t *testing.T) {
	_, err := Parse("p.yaml", []byte("routes: 3\n"))
	var ptr *Errors
	var val Errors
	var one *Error
	if !errors.As(err, &ptr) || !errors.As(err, &val) || !errors.As(err, &one) {
		t.Fatalf("errors.As failed on %T", err)
	}
	if len(val) != 1 || val[0] != one || one.Line != 1 || one.Field != "routes" {
		t.Errorf("got %#v", val)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		err  Error
		want string
	}{
		{Error{File: "p.yaml", Line: 12, Field: "routes[0].targets[1].rate", Msg: "bad"}, "p.yaml:12: routes[0].targets[1].rate: bad"},
		{Error{File: "p.yaml", Line: 3, Msg: "invalid YAML"}, "p.yaml:3: invalid YAML"},
		{Error{File: "p.yaml", Msg: "empty"}, "p.yaml: empty"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	es := Errors{{File: "a", Line: 1, Msg: "x"}, {File: "a", Line: 2, Msg: "y"}}
	if got := es.Error(); got != "a:1: x\na:2: y" {
		t.Errorf("Errors.Error() = %q", got)
	}
}

func TestParseUsesEnvironment(t *testing.T) {
	t.Setenv("SLUICE_TEST_TARGET", "http://127.0.0.1:8089")
	src := "routes: [{name: r, match: {path: /}, targets: [{name: t, url: '${SLUICE_TEST_TARGET}'}]}]\n"
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Routes[0].Targets[0].URL.String(); got != "http://127.0.0.1:8089" {
		t.Errorf("url %s", got)
	}
}

func TestExpand(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "plain", want: "plain"},
		{in: "${SLUICE_RATE}", want: "200/s"},
		{in: "a${SLUICE_PORT}b${SLUICE_PORT}", want: "a8081b8081"},
		{in: "${SLUICE_UNSET:-def}", want: "def"},
		{in: "${SLUICE_EMPTY:-def}", want: "def"},
		{in: "${SLUICE_EMPTY}", want: ""},
		{in: "${SLUICE_UNSET:-}", want: ""},
		{in: "${SLUICE_PORT:-9}", want: "8081"},
		{in: "cost $5 and $$", want: "cost $5 and $$"},
		{in: "$${SLUICE_RATE}", want: "${SLUICE_RATE}"},
		{in: "${SLUICE_UNSET}", err: "environment variable SLUICE_UNSET is not set (write ${SLUICE_UNSET:-default} to give a default)"},
		{in: "x${SLUICE_RATE", err: `unterminated ${ in "${SLUICE_RATE": expected ${VAR} or ${VAR:-default}`},
		{in: "${}", err: "invalid ${}: expected ${VAR} or ${VAR:-default}, VAR made of letters, digits and _"},
		{in: "${9X}", err: "invalid ${9X}: expected ${VAR} or ${VAR:-default}, VAR made of letters, digits and _"},
		{in: "${A-B}", err: "invalid ${A-B}: expected ${VAR} or ${VAR:-default}, VAR made of letters, digits and _"},
	} {
		got, err := expand(tc.in, testEnv)
		if fmt.Sprint(err) != tc.err && !(err == nil && tc.err == "") {
			t.Errorf("expand(%q) error = %v, want %q", tc.in, err, tc.err)
		}
		if err == nil && got != tc.want {
			t.Errorf("expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in     string
		want   Rate
		str    string
		paused bool
		err    string
	}{
		{in: "200/s", want: Rate{PerSecond: 200}, str: "200/s"},
		{in: "10/m", want: Rate{PerSecond: 10.0 / 60}, str: "10/m"},
		{in: "3600/h", want: Rate{PerSecond: 1}, str: "1/s"},
		{in: "90/h", want: Rate{PerSecond: 0.025}, str: "90/h"},
		{in: "0.5/s", want: Rate{PerSecond: 0.5}, str: "30/m"},
		{in: " 7 / S ", want: Rate{PerSecond: 7}, str: "7/s"},
		{in: "0", want: Rate{}, str: "0/s", paused: true},
		{in: "0/m", want: Rate{}, str: "0/s", paused: true},
		{in: "unlimited", want: Rate{Unlimited: true}, str: "unlimited"},
		{in: "Unlimited", want: Rate{Unlimited: true}, str: "unlimited"},
		{in: "1000000000/s", want: Rate{PerSecond: 1e9}, str: "1000000000/s"},
		{in: "fast", err: `invalid rate "fast": expected N/s, N/m, N/h, 0 or unlimited`},
		{in: "200", err: `invalid rate "200": expected N/s, N/m, N/h, 0 or unlimited`},
		{in: "200/d", err: `invalid rate "200/d": expected N/s, N/m, N/h, 0 or unlimited`},
		{in: "1e3/s", err: `invalid rate "1e3/s": expected N/s, N/m, N/h, 0 or unlimited`},
		{in: "NaN/s", err: `invalid rate "NaN/s": expected N/s, N/m, N/h, 0 or unlimited`},
		{in: ".5/s", err: `invalid rate ".5/s": expected N/s, N/m, N/h, 0 or unlimited`},
		{in: "-5/s", err: `invalid rate "-5/s": must not be negative`},
		{in: "2000000000/s", err: `invalid rate "2000000000/s": at most 1000000000/s`},
		{in: "", err: `invalid rate "": expected N/s, N/m, N/h, 0 or unlimited`},
	} {
		got, err := ParseRate(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseRate(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if got.String() != tc.str || got.Paused() != tc.paused {
			t.Errorf("ParseRate(%q): String %q Paused %v; want %q %v", tc.in, got.String(), got.Paused(), tc.str, tc.paused)
		}
		if back, err := ParseRate(got.String()); err != nil || back != got {
			t.Errorf("ParseRate(%q) = %+v does not round-trip through %q: %+v, %v", tc.in, got, got.String(), back, err)
		}
	}
}

func TestDefaultBurst(t *testing.T) {
	for _, tc := range []struct {
		rate Rate
		want int
	}{
		{unlimited, 1}, {Rate{}, 1}, {Rate{PerSecond: 0.1}, 1}, {Rate{PerSecond: 10}, 1},
		{Rate{PerSecond: 11}, 2}, {Rate{PerSecond: 200}, 20}, {Rate{PerSecond: MaxRate}, 1e8},
	} {
		if got := defaultBurst(tc.rate); got != tc.want {
			t.Errorf("defaultBurst(%v) = %d, want %d", tc.rate, got, tc.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"500ms", 500 * time.Millisecond, true},
		{"72h", 72 * time.Hour, true},
		{"3d", 72 * time.Hour, true},
		{"1.5d", 36 * time.Hour, true},
		{"1d12h30m", 36*time.Hour + 30*time.Minute, true},
		{"0d", 0, true},
		{"d", 0, false},
		{"-3d", 0, false},
		{"3d-1h", 0, false},
		{"3days", 0, false},
		{"10", 0, false},
		{"1000000000d", 0, false},
		{"106751d", 106751 * 24 * time.Hour, true},
		{"106751d24h", 0, false},
	} {
		got, err := parseDuration(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFsyncString(t *testing.T) {
	for _, s := range []string{"always", "never", "interval:10ms", "interval:1m30s"} {
		f, err := parseFsync(s)
		if err != nil || f.String() != s {
			t.Errorf("parseFsync(%q) = %v, %v", s, f, err)
		}
	}
}

func TestRetryOnStatus(t *testing.T) {
	def := DefaultRetryOn()
	custom := RetryOn{Codes: map[int]bool{503: true}, Class4xx: true}
	for _, tc := range []struct {
		on   RetryOn
		code int
		want bool
	}{
		{def, 500, true}, {def, 599, true}, {def, 408, true}, {def, 425, true}, {def, 429, true},
		{def, 400, false}, {def, 404, false}, {def, 200, false}, {def, 302, false}, {def, 600, false},
		{custom, 503, true}, {custom, 500, false}, {custom, 404, true}, {custom, 499, true}, {custom, 200, false},
		{RetryOn{}, 500, false},
	} {
		if got := tc.on.Status(tc.code); got != tc.want {
			t.Errorf("%+v.Status(%d) = %v, want %v", tc.on, tc.code, got, tc.want)
		}
	}
}

// dump renders a value one field per line, with times, rates, URLs and zones as text, so
// that golden files are readable and comparisons show which field differs.
func dump(v any) string {
	var b strings.Builder
	dumpValue(&b, "", reflect.ValueOf(v))
	return b.String()
}

func dumpValue(b *strings.Builder, path string, v reflect.Value) {
	if v.IsValid() && v.CanInterface() {
		switch x := v.Interface().(type) {
		case *url.URL, *time.Location, time.Duration, time.Weekday, Rate, Fsync:
			if v.Kind() == reflect.Pointer && v.IsNil() {
				fmt.Fprintf(b, "%s = nil\n", path)
			} else {
				fmt.Fprintf(b, "%s = %v\n", path, x)
			}
			return
		}
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			fmt.Fprintf(b, "%s = nil\n", path)
			return
		}
		dumpValue(b, path, v.Elem())
	case reflect.Struct:
		for i := range v.NumField() {
			name := v.Type().Field(i).Name
			if path != "" {
				name = path + "." + name
			}
			dumpValue(b, name, v.Field(i))
		}
	case reflect.Slice:
		if v.Len() == 0 {
			fmt.Fprintf(b, "%s = []\n", path)
		}
		for i := range v.Len() {
			dumpValue(b, fmt.Sprintf("%s[%d]", path, i), v.Index(i))
		}
	case reflect.Map:
		var keys []string
		for _, k := range v.MapKeys() {
			keys = append(keys, fmt.Sprintf("%v=%v", k, v.MapIndex(k)))
		}
		sort.Strings(keys)
		fmt.Fprintf(b, "%s = {%s}\n", path, strings.Join(keys, " "))
	case reflect.String:
		fmt.Fprintf(b, "%s = %q\n", path, v.String())
	default:
		fmt.Fprintf(b, "%s = %v\n", path, v)
	}
}
