package drain

import (
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/internal/hop"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

// Headers set on every replayed request.
const (
	HeaderID             = "X-Sluice-Id"
	HeaderAttempt        = "X-Sluice-Attempt"
	HeaderEnqueuedAt     = "X-Sluice-Enqueued-At"
	HeaderIdempotencyKey = "Idempotency-Key"
)

// skipHeaders are the headers, in lower case, never copied from a stored
// message besides the hop-by-hop ones (internal/hop): Expect (the body is
// already here; a 100 Continue would only confuse the client), Host and
// Content-Length (set from the target and the body), and the headers the
// drainer sets itself, so a client cannot forge them.
var skipHeaders = map[string]bool{
	"expect":               true,
	"host":                 true,
	"content-length":       true,
	"x-sluice-id":          true,
	"x-sluice-attempt":     true,
	"x-sluice-enqueued-at": true,
	"idempotency-key":      true,
}

// forwardHeaders returns the stored headers to send on: all but skipHeaders
// and the headers named in Connection.
func forwardHeaders(hs []store.Header) []store.Header {
	named := connectionNamed(hs)
	out := make([]store.Header, 0, len(hs))
	for _, h := range hs {
		if !skipHeader(h.Name, named) {
			out = append(out, h)
		}
	}
	return out
}

// connectionNamed returns the header names, in lower case, that the
// Connection headers of hs list; nil (no allocation) if there are none.
func connectionNamed(hs []store.Header) []string {
	var named []string
	for _, h := range hs {
		if strings.EqualFold(h.Name, "Connection") {
			hop.Tokens([]byte(h.Value), func(tok []byte) { named = append(named, strings.ToLower(string(tok))) })
		}
	}
	return named
}

// skipByLen is skipHeaders by the length of the name, so that a header is
// checked against the few of its length with no lower-casing or hashing.
var skipByLen = func() (by [64][]string) {
	for h := range skipHeaders {
		by[len(h)] = append(by[len(h)], h)
	}
	return by
}()

// skipHeader reports whether the header name is not sent on: hop-by-hop,
// one of skipHeaders or of named (lower case). It does not allocate.
func skipHeader(name string, named []string) bool {
	if hop.IsString(name) {
		return true
	}
	if len(name) < len(skipByLen) {
		for _, h := range skipByLen[len(name)] {
			if strings.EqualFold(name, h) {
				return true
			}
		}
	}
	for _, n := range named {
		if strings.EqualFold(name, n) {
			return true
		}
	}
	return false
}

// endpoint is where a target's requests go.
type endpoint struct {
	scheme string // "http" or "https"
	addr   string // host:port to dial
	host   string // Host header: the URL's host as written
	path   string // the URL's path, escaped, without a trailing slash
	query  string // the URL's raw query, appended to every request's
	// callback is the route's callback_header: it names where sluice reports
	// outcomes, which is none of the target's business; never sent on.
	callback string
	// headers are the target's own (key headers), set on every request.
	headers []policies.HeaderField
}

// setHeaders sets the target's own headers on req, replacing any of the
// same name.
func (e *endpoint) setHeaders(req *fasthttp.Request) {
	for _, h := range e.headers {
		req.Header.Set(h.Name, h.Value)
	}
}

func newEndpoint(u *url.URL) endpoint {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return endpoint{
		scheme: u.Scheme,
		addr:   joinHostPort(u.Hostname(), port),
		host:   u.Host,
		path:   strings.TrimSuffix(u.EscapedPath(), "/"),
		query:  u.RawQuery,
	}
}

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// requestURI joins a stored request URI (path and query as received) under
// the endpoint's path, with one slash at the joint: /base + /api/orders?x=1
// is /base/api/orders?x=1. The rest of the stored path is kept byte for byte.
// The endpoint's own query, if any, is appended to the request's.
func (e *endpoint) requestURI(stored string) string {
	if i := strings.Index(stored, "://"); i > 0 && !strings.ContainsAny(stored[:i], "/?") {
		// absolute form: keep the path and query only
		rest := stored[i+3:]
		if j := strings.IndexAny(rest, "/?"); j >= 0 {
			stored = rest[j:]
		} else {
			stored = "/"
		}
	}
	if i := strings.IndexByte(stored, '#'); i >= 0 { // never sent by clients; never forwarded
		stored = stored[:i]
	}
	path, query, hasQuery := strings.Cut(stored, "?")
	var b strings.Builder
	b.Grow(len(e.path) + len(stored) + len(e.query) + 2)
	b.WriteString(e.path)
	b.WriteByte('/')
	b.WriteString(strings.TrimPrefix(path, "/"))
	switch {
	case hasQuery && e.query != "":
		b.WriteString("?" + query + "&" + e.query)
	case hasQuery:
		b.WriteString("?" + query)
	case e.query != "":
		b.WriteString("?" + e.query)
	}
	return b.String()
}

// batchURI is where a batch goes: the target URL's path and query as
// written (the messages' own paths are not used).
func (e *endpoint) batchURI() string {
	p := e.path
	if p == "" {
		p = "/"
	}
	if e.query != "" {
		p += "?" + e.query
	}
	return p
}

// buildRequest fills req with the replay of d to e.
func buildRequest(req *fasthttp.Request, e *endpoint, d *store.Delivery) {
	req.Header.DisableNormalizing()
	req.Header.SetNoDefaultContentType(true)
	method := d.Method
	if method == "" {
		method = fasthttp.MethodGet
	}
	req.Header.SetMethod(method)
	if e.path == "" && e.query == "" && strings.HasPrefix(d.URI, "/") && !strings.Contains(d.URI, "#") {
		req.SetRequestURI(d.URI) // the stored URI as it is (the common case): no join
	} else {
		req.SetRequestURI(e.requestURI(d.URI))
	}
	req.URI().SetScheme(e.scheme)
	req.URI().SetHost(e.host)
	req.Header.SetHost(e.host)
	named := connectionNamed(d.Header)
	for _, h := range d.Header {
		if !skipHeader(h.Name, named) && (e.callback == "" || !strings.EqualFold(h.Name, e.callback)) {
			req.Header.Add(h.Name, h.Value)
		}
	}
	// The values are formatted into one stack buffer (fasthttp copies
	// them): no allocation per attempt. They are added, not set: the
	// stored headers never carry these names (skipHeaders), and Set would
	// look through every header for each.
	var buf [96]byte
	var id []byte
	if !d.ID.IsZero() {
		id = d.ID.AppendTo(buf[:0])
		req.Header.AddBytesV(HeaderID, id)
	}
	req.Header.AddBytesV(HeaderAttempt, strconv.AppendInt(buf[len(id):len(id)], int64(d.Attempt), 10))
	req.Header.AddBytesV(HeaderEnqueuedAt, d.EnqueuedAt.UTC().AppendFormat(buf[len(id):len(id)], time.RFC3339Nano))
	switch {
	case d.IdempotencyKey != "":
		req.Header.Add(HeaderIdempotencyKey, d.IdempotencyKey)
	case id != nil:
		req.Header.AddBytesV(HeaderIdempotencyKey, id)
	}
	e.setHeaders(req)
	req.SetBodyRaw(d.Body)
}
