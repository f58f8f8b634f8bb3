// Package hop is the one list of hop-by-hop headers (RFC 9110 section
// 7.6.1, and the de-facto ones net/http/httputil also drops) and the one
// parser of the Connection header's tokens, for the proxy (what it stores
// and forwards) and the drainers (what they replay). A hop-by-hop header
// describes one connection, so sluice never stores, forwards or replays
// one, nor a header that Connection names. It allocates nothing.
package hop

import (
	"bytes"
	"strings"
)

// Names are the hop-by-hop headers, canonically spelled.
var Names = []string{
	"Connection",
	"Proxy-Connection", // non-standard, sent by old clients
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// byLen is Names by length, so a name is compared only with those of its
// length.
var byLen = func() (m [20][]string) {
	for _, h := range Names {
		m[len(h)] = append(m[len(h)], h)
	}
	return m
}()

// Is reports whether a header named name (in any case) is hop-by-hop.
func Is(name []byte) bool {
	if len(name) >= len(byLen) {
		return false
	}
	for _, h := range byLen[len(name)] {
		if bytes.EqualFold(name, []byte(h)) {
			return true
		}
	}
	return false
}

// IsString is Is for a string.
func IsString(name string) bool {
	if len(name) >= len(byLen) {
		return false
	}
	for _, h := range byLen[len(name)] {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

// Tokens calls fn with each header name a Connection header's value lists
// (trimmed, empty ones skipped); tok aliases value.
func Tokens(value []byte, fn func(tok []byte)) {
	for t := range bytes.SplitSeq(value, []byte(",")) {
		if t = bytes.TrimSpace(t); len(t) > 0 {
			fn(t)
		}
	}
}
