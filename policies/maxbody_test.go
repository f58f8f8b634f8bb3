package policies

import (
	"strings"
	"testing"
)

// TestMaxBodyByMode: a passthrough route's max_body defaults to unlimited and
// may be any size (the body is streamed, not held); a buffer route's stays
// within 1B..256MiB with 1MiB by default.
func TestMaxBodyByMode(t *testing.T) {
	const tmpl = `
routes:
  - name: r
    match: { path: /r }
    mode: %MODE%
%BODY%    %EXTRA%
`
	for _, c := range []struct {
		mode, body string
		want       int64
		err        string
	}{
		{"passthrough", "", NoBodyLimit, ""},
		{"passthrough", "max_body: unlimited", NoBodyLimit, ""},
		{"passthrough", "max_body: 2GiB", 2 << 30, ""},
		{"passthrough", "max_body: 1KiB", 1 << 10, ""},
		{"passthrough", "max_body: 0", 0, "routes[0].max_body: size 0 out of range: expected 1 to 1EiB, or unlimited"},
		{"passthrough", "max_body: lots", 0, "routes[0].max_body: invalid size"},
		{"buffer", "", DefaultMaxBody, ""},
		{"buffer", "max_body: 256MiB", 256 << 20, ""},
		{"buffer", "max_body: 2GiB", 0, "routes[0].max_body: size 2GiB out of range: expected 1 to 256MiB"},
		{"buffer", "max_body: unlimited", 0, "routes[0].max_body: invalid size"},
	} {
		extra := "upstream: http://127.0.0.1:8081"
		if c.mode == "buffer" {
			extra = "targets: [{ name: t, url: http://127.0.0.1:8081 }]"
		}
		body := ""
		if c.body != "" {
			body = "    " + c.body + "\n"
		}
		text := strings.NewReplacer("%MODE%", c.mode, "%BODY%", body, "%EXTRA%", extra).Replace(tmpl)
		p, err := Parse("p.yaml", []byte(text))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s %q: error %v, want %q", c.mode, c.body, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %q: %v", c.mode, c.body, err)
			continue
		}
		if got := p.Routes[0].MaxBody; got != c.want {
			t.Errorf("%s %q: max_body %d, want %d", c.mode, c.body, got, c.want)
		}
	}
}
