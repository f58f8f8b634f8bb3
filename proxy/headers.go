package proxy

import (
	"bytes"
	"iter"
	"net"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/hop"
	"github.com/sluice-proxy/sluice/store"
)

// isNamed reports whether a header named name is one of the Connection
// header's tokens.
func isNamed(name []byte, connTokens [][]byte) bool {
	for _, t := range connTokens {
		if bytes.EqualFold(name, t) {
			return true
		}
	}
	return false
}

// connectionTokens returns the header names listed in Connection.
func connectionTokens(h *fasthttp.RequestHeader) [][]byte {
	var toks [][]byte
	for _, v := range h.PeekAll("Connection") {
		hop.Tokens(v, func(t []byte) { toks = append(toks, t) })
	}
	return toks
}

// storedHeaders returns the end-to-end headers of req to keep with a buffered
// message (see addStoredHeaders).
func storedHeaders(ctx *fasthttp.RequestCtx) []store.Header {
	var d store.Draft
	addStoredHeaders(ctx, &d, nil)
	m := d.Message()
	return m.Header
}

// addStoredHeaders adds to d the end-to-end headers of the request: hop-by-hop
// headers, Host and Content-Length are dropped (the drainer sets them for the
// target), and X-Forwarded-For/-Proto/-Host are added so the target learns
// who the client was. scratch is reused for the X-Forwarded-For value; it
// must stay valid, like d's other slices, until d is appended.
func addStoredHeaders(ctx *fasthttp.RequestCtx, d *store.Draft, scratch []byte) {
	h := &ctx.Request.Header
	var toks [][]byte
	if len(h.Peek("Connection")) > 0 {
		toks = connectionTokens(h)
	}
	xff := scratch[:0]
	for k, v := range h.All() {
		switch storedKind(k) {
		case dropHeader:
			continue
		case forwardedFor:
			if len(xff) > 0 {
				xff = append(xff, ", "...)
			}
			xff = append(xff, v...)
			continue
		}
		if len(toks) > 0 && isNamed(k, toks) {
			continue
		}
		d.AddHeader(k, v)
	}
	if len(xff) > 0 {
		xff = append(xff, ", "...)
	}
	xff = appendClientIP(xff, ctx)
	d.AddHeader(headerXFF, xff)
	if ctx.IsTLS() {
		d.AddHeader(headerXFProto, valueHTTPS)
	} else {
		d.AddHeader(headerXFProto, valueHTTP)
	}
	d.AddHeader(headerXFHost, ctx.Host())
}

// The names and values addStoredHeaders adds, built once: a conversion
// from a string for each request would allocate, since d keeps them.
var (
	headerXFF     = []byte("X-Forwarded-For")
	headerXFProto = []byte("X-Forwarded-Proto")
	headerXFHost  = []byte("X-Forwarded-Host")
	valueHTTP     = []byte("http")
	valueHTTPS    = []byte("https")
)

const (
	keepHeader = iota
	dropHeader
	forwardedFor
)

// storedKind says what addStoredHeaders does with a header named k (in any
// case): keep it, drop it (a hop-by-hop header of hop.Names, Host,
// Content-Length, X-Forwarded-Proto or -Host: sluice sets those), or join it
// to X-Forwarded-For. Names listed in Connection are checked apart. It
// compares k only with the names of its length.
func storedKind(k []byte) int {
	if hop.Is(k) {
		return dropHeader
	}
	eq := func(name string) bool { return bytes.EqualFold(k, []byte(name)) }
	switch len(k) {
	case 4:
		if eq("Host") {
			return dropHeader
		}
	case 14:
		if eq("Content-Length") {
			return dropHeader
		}
	case 15:
		if eq("X-Forwarded-For") {
			return forwardedFor
		}
	case 16:
		if eq("X-Forwarded-Host") {
			return dropHeader
		}
	case 17:
		if eq("X-Forwarded-Proto") {
			return dropHeader
		}
	}
	return keepHeader
}

func appendClientIP(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	if a, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap().AppendTo(dst)
	}
	return append(dst, clientIP(ctx)...)
}

func clientIP(ctx *fasthttp.RequestCtx) string {
	if a, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, err := net.SplitHostPort(ctx.RemoteAddr().String())
	if err != nil {
		return ctx.RemoteAddr().String()
	}
	return host
}

// anyHop reports whether any of the headers is hop-by-hop: one pass over
// them. Without one there is no Connection header either, so no header it
// names.
func anyHop(all iter.Seq2[[]byte, []byte]) bool {
	for k := range all {
		if hop.Is(k) {
			return true
		}
	}
	return false
}

// hopNames returns the names, as spelled, of the hop-by-hop headers among
// all: those of hop.Names and those the Connection header names, in any
// case. The upstream pool keeps names as the upstream spelled them
// (DisableHeaderNamesNormalizing), and a header is deleted by its exact
// spelling there, so "keep-alive" is not "Keep-Alive" to Del.
func hopNames(all iter.Seq2[[]byte, []byte]) [][]byte {
	var toks, names [][]byte
	for k, v := range all {
		if bytes.EqualFold(k, []byte("Connection")) {
			hop.Tokens(v, func(t []byte) { toks = append(toks, bytes.Clone(t)) })
		}
	}
	for k := range all {
		if hop.Is(k) || isNamed(k, toks) {
			names = append(names, bytes.Clone(k))
		}
	}
	return names
}

// stripHop removes hop-by-hop headers from a request about to be forwarded.
// Most requests have none: one pass finds that, instead of a lookup of each
// hop-by-hop name.
func stripHop(h *fasthttp.RequestHeader) {
	if !anyHop(h.All()) {
		return
	}
	for _, n := range hopNames(h.All()) {
		h.DelBytes(n)
	}
	for _, name := range hop.Names {
		h.Del(name) // the ones fasthttp keeps apart (Connection: close, Trailer)
	}
}

// stripHopResponse removes hop-by-hop headers from a response about to be
// relayed, in whatever case the upstream spelled them.
func stripHopResponse(h *fasthttp.ResponseHeader) {
	if !anyHop(h.All()) {
		return
	}
	for _, n := range hopNames(h.All()) {
		h.DelBytes(n)
	}
	for _, name := range hop.Names {
		h.Del(name) // the ones fasthttp keeps apart (Connection: close, Trailer)
	}
}
