package drain

import (
	"bytes"

	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

// Response capture (capture_response on a target): the target's answer to a
// successful delivery is kept with the message's state, so the producer can
// read it from the status API (for example, the order number the downstream
// assigned in a Location header or a JSON body).

// hopResponseHeaders are the hop-by-hop headers of RFC 9110 section 7.6.1;
// they describe the drainer's connection, not the answer, and are not kept.
var hopResponseHeaders = [][]byte{
	[]byte("Connection"), []byte("Proxy-Connection"), []byte("Keep-Alive"),
	[]byte("Proxy-Authenticate"), []byte("Proxy-Authorization"), []byte("Te"),
	[]byte("Trailer"), []byte("Transfer-Encoding"), []byte("Upgrade"),
}

// capture copies resp's status, its end-to-end headers (hop-by-hop ones and
// those named in Connection removed) and at most maxBytes of its body, as
// received (a compressed body stays compressed; Content-Encoding says so).
// tooLarge says the body was too large to be read at all: it is then empty
// and Truncated.
func capture(resp *fasthttp.Response, maxBytes int64, tooLarge bool) *store.Response {
	out := &store.Response{Status: resp.StatusCode(), Truncated: tooLarge}
	var named [][]byte
	for _, v := range resp.Header.PeekAll("Connection") {
		for _, t := range bytes.Split(v, []byte(",")) {
			if t = bytes.TrimSpace(t); len(t) > 0 {
				named = append(named, t)
			}
		}
	}
	for k, v := range resp.Header.All() {
		if isHopName(k, hopResponseHeaders) || isHopName(k, named) {
			continue
		}
		out.Header = append(out.Header, store.Header{Name: string(k), Value: string(v)})
	}
	body := resp.Body()
	if int64(len(body)) > maxBytes {
		body, out.Truncated = body[:maxBytes], true
	}
	if len(body) > 0 {
		out.Body = bytes.Clone(body)
	}
	return out
}

func isHopName(name []byte, list [][]byte) bool {
	for _, h := range list {
		if bytes.EqualFold(name, h) {
			return true
		}
	}
	return false
}
