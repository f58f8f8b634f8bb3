package drain

import (
	"bytes"
	"io"

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

// capture copies resp's status and its end-to-end headers (hop-by-hop ones
// and those named in Connection removed), with body, the first
// capture_response.max_bytes of the body as received (a compressed body
// stays compressed; Content-Encoding says so), read by readBody; truncated
// says the body went on beyond it.
func capture(resp *fasthttp.Response, body []byte, truncated bool) *store.Response {
	out := &store.Response{Status: resp.StatusCode(), Truncated: truncated}
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
	if len(body) > 0 {
		out.Body = body
	}
	return out
}

// readBody reads an answer's streamed body: the first keep bytes are
// returned (truncated says more followed), the rest is read and thrown away
// as it arrives, through io.Discard's pooled 8 KiB buffers, so an attempt
// holds at most keep bytes of the answer whatever its size. The connection's
// read deadline (the attempt's timeout) bounds the reading; a body that
// fails or does not end in time leaves the status as it was received (the
// downstream has answered) and closes the connection when the stream is
// closed. The caller closes the stream.
func readBody(stream io.Reader, keep int64) (body []byte, truncated bool) {
	if keep > 0 {
		var buf bytes.Buffer
		buf.Grow(int(min(keep, 4<<10)))
		if n, _ := buf.ReadFrom(io.LimitReader(stream, keep)); n > 0 {
			body = buf.Bytes()
		}
		var one [1]byte
		if n, _ := io.ReadFull(stream, one[:]); n > 0 {
			truncated = true
		}
	}
	io.Copy(io.Discard, stream)
	return body, truncated
}

func isHopName(name []byte, list [][]byte) bool {
	for _, h := range list {
		if bytes.EqualFold(name, h) {
			return true
		}
	}
	return false
}
