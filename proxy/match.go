package proxy

import (
	"bytes"
	"strings"

	"github.com/valyala/fasthttp"
)

// Route matching. A route matches a request when its host, path and methods
// all do; routes are tried in policy order and the first match wins.
//
//   - match.host: "" matches any host. "shop.example.com" matches that host
//     exactly; "*.example.com" matches any name below example.com (a.example.com,
//     a.b.example.com), not example.com itself. The request's host is compared
//     without its port and without case; an absolute request URI's host wins
//     over the Host header (RFC 9112 section 3.2.2).
//   - match.path: a prefix on segment boundaries (see pathMatches), or with
//     match.exact the whole path, byte for byte (query excluded); the
//     request's path as normalised by normalizeURI (path.go).
//   - match.methods: when host and path match but the method does not, the
//     request is answered 405 with the methods allowed, even when a default
//     upstream is set: a path the policy names is never passed elsewhere.

// match returns the first route whose host, path and method match. When some
// route's host and path matched but none of the methods did, it returns the
// methods those routes allow (for 405).
func (s *Server) match(method, host, path []byte) (*route, []string) {
	var allowed []string
	for _, r := range s.routes() {
		if !hostMatches(r.Match.Host, host) || !r.pathMatches(path) {
			continue
		}
		if len(r.Match.Methods) == 0 {
			return r, nil
		}
		for _, m := range r.Match.Methods {
			if m == string(method) {
				return r, nil
			}
		}
		allowed = append(allowed, r.Match.Methods...)
	}
	return nil, allowed
}

func (r *route) pathMatches(path []byte) bool {
	if r.Match.Exact {
		return string(path) == r.Match.Path
	}
	return pathMatches(r.Match.Path, path)
}

// pathMatches reports whether path is prefix itself or lies below it:
// "/api/orders" matches "/api/orders" and "/api/orders/7", not "/api/ordersX".
// A prefix ending in "/" matches everything below it.
func pathMatches(prefix string, path []byte) bool {
	p := string(path)
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || strings.HasSuffix(prefix, "/") || p[len(prefix)] == '/'
}

// hostMatches reports whether host, as the client sent it (any case, maybe
// with a port), matches pattern: "" (any), a lower-case name, or "*." and a
// lower-case name for the names below it.
func hostMatches(pattern string, host []byte) bool {
	if pattern == "" {
		return true
	}
	h := hostname(host)
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok { // suffix is ".example.com"
		return len(h) > len(suffix) && bytes.EqualFold(h[len(h)-len(suffix):], []byte(suffix))
	}
	return bytes.EqualFold(h, []byte(pattern))
}

// hostname returns host without its port, brackets (IPv6) or a final dot.
func hostname(host []byte) []byte {
	if len(host) > 0 && host[0] == '[' {
		if i := bytes.IndexByte(host, ']'); i > 0 {
			return host[1:i]
		}
		return host
	}
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host[:i], ':') < 0 {
		host = host[:i]
	}
	return bytes.TrimSuffix(host, []byte("."))
}

// requestHost returns the host a request names: an absolute request URI's
// host, else the Host header.
func requestHost(h *fasthttp.RequestHeader) []byte {
	uri := h.RequestURI()
	if len(uri) > 0 && uri[0] != '/' {
		if i := bytes.Index(uri, []byte("://")); i >= 0 {
			rest := uri[i+3:]
			if j := bytes.IndexAny(rest, "/?#"); j >= 0 {
				rest = rest[:j]
			}
			if k := bytes.LastIndexByte(rest, '@'); k >= 0 { // user info is never a host
				rest = rest[k+1:]
			}
			return rest
		}
	}
	return h.Host()
}

// pathOf returns the path of a raw request-target: origin form
// ("/a?b") or absolute form ("http://h/a?b").
func pathOf(uri []byte) []byte {
	if i := strings.IndexAny(string(uri), "?#"); i >= 0 {
		uri = uri[:i]
	}
	if len(uri) > 0 && uri[0] != '/' {
		if i := strings.Index(string(uri), "://"); i >= 0 {
			rest := uri[i+3:]
			if j := strings.IndexByte(string(rest), '/'); j >= 0 {
				return rest[j:]
			}
			return []byte("/")
		}
	}
	return uri
}
