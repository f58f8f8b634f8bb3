package proxy

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/logproto"
)

// Splunk HEC's token check and indexer acknowledgement, for routes of
// protocol splunk-hec (handleSplunkHEC).
//
// Tokens: with routes[].hec_tokens set, every call but health must carry
// one of them, as Splunk reads it: Authorization: Splunk <token>, or Basic
// credentials whose password is the token; with hec_query_token also
// ?token=<token> in a request without Authorization (Splunk's query string
// authentication; the header wins when both are there). No token is 401
// code 2, an Authorization header of another shape 401 code 3, a token not
// listed 403 code 4, in HEC's own {"text","code"} body; nothing is stored.
// Tokens are compared in constant time and never logged or stored: a
// token parameter is cut from the URI stored with the events, whatever
// the route's settings.
//
// Acknowledgement: a call that names a channel (X-Splunk-Request-Channel,
// or ?channel=) gets an ackId in its success reply, counting from 0 per
// channel; POST /services/collector/ack with the channel and
// {"acks":[ids]} answers {"acks":{"<id>":true}} for each id issued. Every
// document is durable before the success reply, so an ack is true as soon
// as it is issued: a channel's state is the next id only (8 bytes and its
// name), and at most hecMaxChannels channels are kept per route. Past
// that, the oldest channel is forgotten: its acks then answer false, and
// the client (Splunk's forwarders, the OTel Collector with acks on) sends
// those events again: duplicates, never loss. The state is in memory: a
// restart of sluice forgets it in the same way.

// hecMaxChannels bounds the channels a route remembers; hecMaxChannelLen a
// channel's name (Splunk's are GUIDs, 36 characters); hecMaxAcks the ids
// of one ack query.
const (
	hecMaxChannels   = 10000
	hecMaxChannelLen = 128
	hecMaxAcks       = 10000
)

// hecAcks is one route's acknowledgement state: per channel, the next ackId.
type hecAcks struct {
	mu    sync.Mutex
	next  map[string]uint64
	order []string // channels by first use, for forgetting the oldest
}

func newHECAcks() *hecAcks { return &hecAcks{next: map[string]uint64{}} }

// issue returns the next ackId of channel.
func (a *hecAcks) issue(channel []byte) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.next[string(channel)]
	if !ok {
		if len(a.next) >= hecMaxChannels {
			delete(a.next, a.order[0])
			a.order = a.order[1:]
		}
		ch := string(channel)
		a.order = append(a.order, ch)
		a.next[ch] = 0
	}
	a.next[string(channel)] = id + 1
	return id
}

// done reports, for each id, whether it was issued on channel.
func (a *hecAcks) done(channel []byte, ids []uint64) []bool {
	a.mu.Lock()
	next, ok := a.next[string(channel)]
	a.mu.Unlock()
	out := make([]bool, len(ids))
	for i, id := range ids {
		out[i] = ok && id < next
	}
	return out
}

// hecChannel returns the request's channel, from the header or the query.
func hecChannel(ctx *fasthttp.RequestCtx) []byte {
	if c := ctx.Request.Header.Peek("X-Splunk-Request-Channel"); len(c) > 0 {
		return c
	}
	return ctx.QueryArgs().Peek("channel")
}

// hecAuthorized checks the request's token against the route's; when it
// fails it answers in HEC's shape and returns false.
func hecAuthorized(ctx *fasthttp.RequestCtx, r *route) bool {
	if len(r.HECTokens) == 0 {
		return true
	}
	auth := ctx.Request.Header.Peek("Authorization")
	var token []byte
	ok := true
	switch {
	case len(auth) > 0:
		token, ok = hecToken(auth)
	case r.HECQueryToken:
		token = ctx.QueryArgs().Peek("token")
	}
	if len(auth) == 0 && len(token) == 0 {
		ctx.Response.Header.Set("WWW-Authenticate", `Splunk realm="sluice"`)
		writeHEC(ctx, fasthttp.StatusUnauthorized, logproto.HECReply("Token is required", logproto.HECTokenRequired, -1))
		return false
	}
	if !ok {
		ctx.Response.Header.Set("WWW-Authenticate", `Splunk realm="sluice"`)
		writeHEC(ctx, fasthttp.StatusUnauthorized, logproto.HECReply("Invalid authorization", logproto.HECInvalidAuth, -1))
		return false
	}
	match := false // every token is compared, by digest (tokenEqual)
	for _, t := range r.HECTokens {
		match = tokenEqual(token, t) || match
	}
	if !match {
		writeHEC(ctx, fasthttp.StatusForbidden, logproto.HECReply("Invalid token", logproto.HECInvalidToken, -1))
		return false
	}
	return true
}

// withoutToken returns uri without its query's token parameters (every
// "token" or "token=..." between & separators), uri itself when it has
// none: a HEC token is never stored, and a client may put it in the query
// string (hec_query_token) whether or not the route reads it there.
func withoutToken(uri []byte) []byte {
	path, query, ok := bytes.Cut(uri, []byte("?"))
	if !ok || !bytes.Contains(query, []byte("token")) && !bytes.Contains(query, []byte("%")) {
		return uri
	}
	out := append(make([]byte, 0, len(uri)), path...)
	sep := byte('?')
	for part := range bytes.SplitSeq(query, []byte("&")) {
		if isTokenKey(part) {
			continue
		}
		out = append(append(out, sep), part...)
		sep = '&'
	}
	return out
}

// hecToken reads the token of an Authorization header: "Splunk <token>",
// or Basic credentials whose password is the token.
func hecToken(auth []byte) ([]byte, bool) {
	scheme, rest, _ := bytes.Cut(auth, []byte(" "))
	rest = bytes.TrimSpace(rest)
	switch {
	case len(rest) == 0:
		return nil, false
	case bytes.EqualFold(scheme, []byte("Splunk")):
		return rest, true
	case bytes.EqualFold(scheme, []byte("Basic")):
		dec, err := base64.StdEncoding.DecodeString(string(rest))
		if err != nil {
			return nil, false
		}
		_, pass, ok := bytes.Cut(dec, []byte(":"))
		return pass, ok && len(pass) > 0
	}
	return nil, false
}

// isTokenKey reports whether the query parameter part (key or key=value)
// is named token, percent-escaped or not: the query string is decoded
// before its token is read, so "tok%65n=..." is a token as well.
func isTokenKey(part []byte) bool {
	key, _, _ := bytes.Cut(part, []byte("="))
	if bytes.IndexByte(key, '%') < 0 {
		return string(key) == "token"
	}
	k, err := url.QueryUnescape(string(key))
	return err == nil && k == "token"
}
