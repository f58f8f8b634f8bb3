package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"github.com/valyala/fasthttp"
)

// Who may read the status API and what it shows (policy key status_api).
// Anyone who holds a message's id can ask for its status, and ids travel:
// in Location headers, client logs, support tickets. So by default the
// status API shows no query values (api_key=...), no credential headers of a
// captured response (Set-Cookie, Authorization: status_api.redact_headers)
// and no captured body (customer data) unless the request carries the admin
// token; status_api.token makes every status request need a token, and
// status_api.enabled: false turns the API off.

// redacted replaces what the status API does not show.
const redacted = "redacted"

// statusAccess is what a status request may see.
type statusAccess struct {
	ok     bool // may read at all
	bodies bool // may read captured bodies (the admin token)
}

// statusAccess judges the request's bearer token: with status_api.token
// set, it must be that token or the admin token; captured bodies need the
// admin token. Tokens are compared in constant time.
func (s *Server) statusAccess(ctx *fasthttp.RequestCtx) statusAccess {
	tok := bearer(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))
	admin := s.cfg.AdminToken != "" && tokenEqual(tok, s.cfg.AdminToken)
	need := s.cfg.Policy.StatusAPI.Token
	return statusAccess{ok: admin || need == "" || tokenEqual(tok, need), bodies: admin}
}

// bearer returns the token of an "Authorization: Bearer TOKEN" value, or nil.
func bearer(v []byte) []byte {
	const prefix = "bearer "
	if len(v) <= len(prefix) || !strings.EqualFold(string(v[:len(prefix)]), prefix) {
		return nil
	}
	return bytes.TrimSpace(v[len(prefix):])
}

// tokenEqual reports whether got is the token want. It compares their
// SHA-256 digests in constant time, as the admin API does: comparing the
// tokens themselves would answer a token of another length at once, and
// so tell a client timing the answers the token's length.
func tokenEqual(got []byte, want string) bool {
	if len(got) == 0 {
		return false
	}
	g, w := sha256.Sum256(got), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// redactQuery returns uri with the value of each query parameter replaced
// by "redacted" (names kept, so a reader can still tell which request it
// was). A parameter with no "=" (?tok_abc123) may itself be a token: it is
// replaced whole.
func redactQuery(uri string) string {
	path, query, ok := strings.Cut(uri, "?")
	if !ok || query == "" {
		return uri
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		name, v, ok := strings.Cut(p, "=")
		switch {
		case !ok && p != "":
			params[i] = redacted
		case ok && v != "":
			params[i] = name + "=" + redacted
		}
	}
	return path + "?" + strings.Join(params, "&")
}

// redactHeader reports whether the status API hides the value of header name.
func (s *Server) redactHeader(name string) bool {
	for _, h := range s.cfg.Policy.StatusAPI.RedactHeaders {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}
