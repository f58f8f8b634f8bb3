package proxy

import (
	"bytes"
	"fmt"

	"github.com/valyala/fasthttp"
)

// checkCallback enforces a route's callbacks.allow at ingest: a request whose
// callback_header names a URL that matches no allowed prefix (or that names
// more than one) is answered 400 callback_not_allowed, and false is
// returned: nothing is stored. An allowed URL is stored with the message as
// one of its headers; the drainers read it back and never send it on.
func checkCallback(ctx *fasthttp.RequestCtx, r *route) bool {
	if r.CallbackHeader == "" {
		return true
	}
	vals := ctx.Request.Header.PeekAll(r.CallbackHeader)
	switch {
	case len(vals) == 0:
		return true
	case len(vals) > 1:
		writeError(ctx, fasthttp.StatusBadRequest, "callback_not_allowed",
			fmt.Sprintf("%s is given %d times; name one callback URL; nothing was stored", r.CallbackHeader, len(vals)))
		return false
	}
	v := bytes.TrimSpace(vals[0])
	if len(v) == 0 || r.Callbacks.Allows(string(v)) {
		return true
	}
	writeError(ctx, fasthttp.StatusBadRequest, "callback_not_allowed",
		fmt.Sprintf("the callback URL in %s matches no prefix in callbacks.allow of route %q; nothing was stored", r.CallbackHeader, r.Name))
	return false
}
