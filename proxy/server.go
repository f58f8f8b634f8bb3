package proxy

import (
	"runtime"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/policies"
)

// withServerDefaults fills the zero fields of a policy's server block (a
// Policy built in code rather than parsed) with the policy file's defaults.
func withServerDefaults(sv policies.Server) policies.Server {
	if sv.ReadTimeout <= 0 {
		sv.ReadTimeout = policies.DefaultReadTimeout
	}
	if sv.WriteTimeout <= 0 {
		sv.WriteTimeout = policies.DefaultWriteTimeout
	}
	if sv.IdleTimeout <= 0 {
		sv.IdleTimeout = policies.DefaultIdleTimeout
	}
	if sv.MaxHeaderBytes <= 0 {
		sv.MaxHeaderBytes = policies.DefaultMaxHeaderBytes
	}
	if sv.MaxConnections <= 0 {
		sv.MaxConnections = policies.DefaultMaxConnections
	}
	switch sv.EventLoops {
	case policies.EventLoopsAuto:
		sv.EventLoops = runtime.GOMAXPROCS(0)
	case policies.EventLoopsOff:
		sv.EventLoops = 0
	}
	return sv
}

// originForm refuses, with a JSON error, what a reverse proxy must not take:
// CONNECT (sluice is not a forward proxy or a tunnel) and request targets
// other than a path (authority form, asterisk form). The absolute form
// ("POST http://other.example/api/orders") is accepted, but only its path is
// used, and only the routes' upstreams and targets are ever contacted.
func (s *Server) originForm(ctx *fasthttp.RequestCtx) bool {
	if ctx.IsConnect() {
		ctx.Response.Header.Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed",
			"CONNECT is not allowed: sluice is a reverse proxy, not a tunnel; nothing was stored or forwarded")
		return false
	}
	if p := pathOf(ctx.Request.Header.RequestURI()); len(p) == 0 || p[0] != '/' {
		writeError(ctx, fasthttp.StatusBadRequest, "bad_request",
			"the request target is not a path (authority or asterisk form); nothing was stored or forwarded")
		return false
	}
	return true
}
