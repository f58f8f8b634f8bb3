package proxy

import (
	"errors"
	"net/url"
	"time"

	"github.com/valyala/fasthttp"
)

// newUpstream returns a keep-alive pool to a passthrough route's upstream.
func newUpstream(u *url.URL) *fasthttp.HostClient {
	addr := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	return &fasthttp.HostClient{
		Addr:                          addr,
		IsTLS:                         u.Scheme == "https",
		MaxConns:                      1024,
		MaxIdleConnDuration:           30 * time.Second,
		ReadTimeout:                   60 * time.Second,
		WriteTimeout:                  60 * time.Second,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
	}
}

// handlePassthrough forwards the request to the route's upstream, and only
// there: the Host header and any absolute URI the client sent are replaced,
// so sluice is never an open proxy.
func (s *Server) handlePassthrough(ctx *fasthttp.RequestCtx, r *route) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	ctx.Request.CopyTo(req)
	prior := string(req.Header.Peek("X-Forwarded-For"))
	stripHop(&req.Header)
	for _, h := range forwardedHeaders(ctx, prior) {
		req.Header.Set(h.Name, h.Value)
	}
	req.SetRequestURI(joinPath(r.Upstream.Path, string(ctx.URI().RequestURI())))
	req.Header.SetHost(r.Upstream.Host)
	req.URI().SetScheme(r.Upstream.Scheme)
	req.URI().SetHost(r.Upstream.Host)

	if err := r.upstream.DoTimeout(req, resp, 60*time.Second); err != nil {
		status, code := fasthttp.StatusBadGateway, "upstream_unreachable"
		if errors.Is(err, fasthttp.ErrTimeout) {
			status, code = fasthttp.StatusGatewayTimeout, "upstream_timeout"
		}
		s.log.Warn("passthrough failed", "route", r.Name, "err", err)
		writeError(ctx, status, code, "upstream of route "+r.Name+": "+err.Error())
		return
	}
	stripHopResponse(&resp.Header)
	resp.CopyTo(&ctx.Response)
}

// joinPath puts a request URI under a base path with exactly one slash at the joint.
func joinPath(base, uri string) string {
	if base == "" || base == "/" {
		return uri
	}
	switch {
	case base[len(base)-1] == '/' && len(uri) > 0 && uri[0] == '/':
		return base + uri[1:]
	case base[len(base)-1] != '/' && (len(uri) == 0 || uri[0] != '/'):
		return base + "/" + uri
	}
	return base + uri
}
