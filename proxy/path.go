package proxy

import (
	"bytes"
)

// Path normalisation: a request's path is normalised once, and that one
// form is what routes are matched on, what is stored with a buffered
// message (and replayed to targets) and what a passthrough route forwards.
// Routing and forwarding see the same thing, so "/api/%2e%2e/orders" can
// neither reach a route that "/orders" would not, nor be routed as one path
// and delivered as another.
//
// The form (RFC 3986 section 6.2.2):
//   - percent-encoded unreserved characters (ALPHA, DIGIT, "-", ".", "_",
//     "~") are decoded: "%2e" is ".", "%41" is "A";
//   - every other percent-encoding is kept, its hex digits in upper case:
//     an encoded slash "%2F" stays "%2F" and is never a segment boundary;
//   - dot segments ("." and "..") are then removed as section 5.2.4 says:
//     "/a/b/../c" is "/a/c", and ".." never climbs above "/".
//
// Nothing else changes (case, repeated slashes, the query). A malformed
// percent-encoding ("%zz", "%4") makes the request a 400.

// normalizeURI returns the request-URI that the raw request target (origin
// or absolute form) stands for: its path normalised and its query as sent (a
// fragment dropped). ok is false for a malformed percent-encoding, or a
// target that is no path (authority or asterisk form). A path
// with no "%" and no "/." is already normal: the result is then a part of
// target itself (nothing is copied); else it is a new slice.
func normalizeURI(target []byte) (uri []byte, ok bool) {
	if i := bytes.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	path := target
	var query []byte
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		path, query = target[:i], target[i:]
	}
	off := 0
	if len(path) > 0 && path[0] != '/' { // absolute form: the path follows the authority
		if i := bytes.Index(path, []byte("://")); i >= 0 {
			off = len(path)
			if j := bytes.IndexByte(path[i+3:], '/'); j >= 0 {
				off = i + 3 + j
			}
		}
	}
	path = path[off:]
	if len(path) == 0 && off > 0 {
		return append([]byte("/"), query...), true
	}
	if len(path) == 0 || path[0] != '/' {
		return nil, false
	}
	if bytes.IndexByte(path, '%') < 0 && !bytes.Contains(path, []byte("/.")) {
		return target[off:], true
	}
	dst, ok := decodeUnreserved(make([]byte, 0, len(path)+len(query)), path)
	if !ok {
		return nil, false
	}
	return append(removeDotSegments(dst), query...), true
}

// pathPart returns the path of a request-URI made by normalizeURI.
func pathPart(uri []byte) []byte {
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}

// decodeUnreserved appends p to dst with its percent-encoded unreserved
// characters decoded and every other percent-encoding in upper case.
func decodeUnreserved(dst, p []byte) ([]byte, bool) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' {
			dst = append(dst, c)
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return dst, false
		}
		b := unhex(p[i+1])<<4 | unhex(p[i+2])
		if isUnreserved(b) {
			dst = append(dst, b)
		} else {
			dst = append(dst, '%', upperHex(p[i+1]), upperHex(p[i+2]))
		}
		i += 2
	}
	return dst, true
}

// removeDotSegments removes the "." and ".." segments of an absolute path
// (RFC 3986 section 5.2.4). A path ending in a dot segment keeps a trailing
// slash ("/a/b/.." is "/a/"). It works on a copy.
func removeDotSegments(p []byte) []byte {
	segs := bytes.Split(p[1:], []byte("/"))
	out := make([][]byte, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch string(s) {
		case ".":
			trailing = last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
		}
	}
	res := append([]byte("/"), bytes.Join(out, []byte("/"))...)
	if trailing && len(out) > 0 {
		res = append(res, '/')
	}
	return res
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// isUnreserved reports whether c is an unreserved character (RFC 3986
// section 2.3).
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
