package proxy

import (
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

func TestHostMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, host string
		want          bool
	}{
		{"", "anything:8080", true},
		{"shop.example.com", "shop.example.com", true},
		{"shop.example.com", "SHOP.Example.com:8443", true},
		{"shop.example.com", "shop.example.com.", true},
		{"shop.example.com", "evil.shop.example.com", false},
		{"shop.example.com", "shop.example.com.evil", false},
		{"shop.example.com", "", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.Example.COM:80", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "badexample.com", false},
		{"::1", "[::1]:8080", true},
		{"127.0.0.1", "127.0.0.1:80", true},
	} {
		if got := hostMatches(c.pattern, []byte(c.host)); got != c.want {
			t.Errorf("hostMatches(%q, %q) = %v, want %v", c.pattern, c.host, got, c.want)
		}
	}
}

func TestRequestHost(t *testing.T) {
	for _, c := range [][3]string{
		{"/a", "shop.example.com", "shop.example.com"},
		{"http://other.example:81/a?x", "shop.example.com", "other.example:81"},
		{"http://user@other.example/a", "shop.example.com", "other.example"},
		{"https://other.example", "", "other.example"},
	} {
		var h fasthttp.RequestHeader
		h.SetRequestURI(c[0])
		h.SetHost(c[1])
		if got := string(requestHost(&h)); got != c[2] {
			t.Errorf("requestHost(%q, Host %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

// TestMatch runs the proxy's route matching over one policy: host (exact,
// wildcard, any), exact and prefix paths, methods, first match wins.
func TestMatch(t *testing.T) {
	s, _ := newTestServer(t, `
routes:
  - name: shop-exact
    match: { host: shop.example.com, path: /api/orders, exact: true, methods: [POST] }
    mode: passthrough
    upstream: http://127.0.0.1:1
  - name: shop-prefix
    match: { host: shop.example.com, path: /api/orders }
    mode: passthrough
    upstream: http://127.0.0.1:1
  - name: tenants
    match: { host: "*.tenants.example.com", path: /api/ }
    mode: passthrough
    upstream: http://127.0.0.1:1
  - name: orders
    match: { path: /api/orders, methods: [POST, PUT] }
    mode: passthrough
    upstream: http://127.0.0.1:1
  - name: health
    match: { path: /health, exact: true }
    mode: passthrough
    upstream: http://127.0.0.1:1
  - name: root
    match: { host: www.example.com, path: / }
    mode: passthrough
    upstream: http://127.0.0.1:1
`, buffer.Config{}, nil)
	for _, c := range []struct {
		method, host, path string
		want               string // route name, "" for none
		allowed            int    // methods listed for 405 when want is ""
	}{
		{"POST", "shop.example.com", "/api/orders", "shop-exact", 0},
		{"POST", "SHOP.example.com:8080", "/api/orders", "shop-exact", 0},
		{"GET", "shop.example.com", "/api/orders", "shop-prefix", 0},
		{"POST", "shop.example.com", "/api/orders/7", "shop-prefix", 0},
		{"POST", "other.example.com", "/api/orders", "orders", 0},
		{"POST", "", "/api/orders/7", "orders", 0},
		{"GET", "a.tenants.example.com", "/api/orders", "tenants", 0},
		{"GET", "x.y.tenants.example.com", "/api/items", "tenants", 0},
		{"GET", "tenants.example.com", "/api/items", "", 0},
		{"GET", "other.example.com", "/api/orders", "", 2},
		{"DELETE", "", "/api/orders/7", "", 2},
		{"GET", "", "/health", "health", 0},
		{"GET", "", "/health/deep", "", 0},
		{"GET", "", "/healthz", "", 0},
		{"GET", "www.example.com", "/anything", "root", 0},
		{"GET", "www.example.com", "/", "root", 0},
		{"GET", "example.com", "/anything", "", 0},
	} {
		r, allowed := s.match([]byte(c.method), []byte(c.host), []byte(c.path))
		got := ""
		if r != nil {
			got = r.Name
		}
		if got != c.want || (r == nil && len(allowed) != c.allowed) {
			t.Errorf("%s %s%s: route %q allowed %v, want %q (%d allowed)", c.method, c.host, c.path, got, allowed, c.want, c.allowed)
		}
	}
}
