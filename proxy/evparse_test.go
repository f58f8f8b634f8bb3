package proxy

import (
	"bufio"
	"bytes"
	"github.com/sluice-proxy/sluice/internal/h1"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/hop"
	"github.com/sluice-proxy/sluice/policies"
)

// FuzzFastRequest checks the event loop's request parser against
// fasthttp's: what it accepts, fasthttp reads the same way, and what it
// forwards is a request fasthttp reads, with the same body and no
// hop-by-hop field. Seeds: testdata/fuzz/FuzzFastRequest.
func FuzzFastRequest(f *testing.F) {
	for _, s := range []string{
		"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
		"GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nKeep-Alive: 5\r\n\r\n",
		"PUT /x HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	u, _ := url.Parse("http://up.example:8080/base")
	rt := &route{Route: policies.Route{Name: "r", Upstream: u}}
	ip := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, data []byte) {
		var r fastRequest
		if r.parse(data) != h1.OK {
			return
		}
		if r.total() > len(data) {
			t.Fatalf("total %d beyond the %d bytes", r.total(), len(data))
		}
		var req fasthttp.Request
		if err := req.Read(bufio.NewReader(bytes.NewReader(data[:r.total()]))); err != nil {
			t.Fatalf("accepted a request fasthttp refuses: %v", err)
		}
		if !bytes.Equal(req.Header.Method(), r.method) || !bytes.Equal(req.Header.RequestURI(), r.target) ||
			!bytes.Equal(req.Body(), data[r.Size:r.total()]) || !bytes.Equal(req.Header.Host(), r.host) {
			t.Fatalf("read otherwise: %q %q %q host %q against fasthttp's %q %q %q host %q",
				r.method, r.target, data[r.Size:r.total()], r.host, req.Header.Method(), req.Header.RequestURI(), req.Body(), req.Header.Host())
		}
		out := r.appendUpstream(nil, data, rt, r.target, ip)
		var fwd fasthttp.Request
		fwd.Header.DisableSpecialHeader()
		if err := fwd.Read(bufio.NewReader(bytes.NewReader(out))); err != nil {
			t.Fatalf("forwarded a request fasthttp cannot read: %v\n%q", err, out)
		}
		if !bytes.Equal(fwd.Body(), data[r.Size:r.total()]) {
			t.Fatalf("forwarded body %q, want %q", fwd.Body(), data[r.Size:r.total()])
		}
		for k := range fwd.Header.All() {
			if hop.Is(k) || r.conn.Named(k) {
				t.Fatalf("forwarded the hop-by-hop field %q", k)
			}
		}
	})
}

// FuzzFastAnswer checks the answer parser against fasthttp's the same way.
func FuzzFastAnswer(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 204 No Content\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n",
		"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), true)
	date := appendHTTPDate(nil, fasthttpNow())
	f.Fuzz(func(t *testing.T, data []byte, isHead bool) {
		var a fastAnswer
		if a.parse(data, isHead) != h1.OK {
			return
		}
		if a.total() > len(data) {
			t.Fatalf("total %d beyond the %d bytes", a.total(), len(data))
		}
		var res fasthttp.Response
		res.SkipBody = isHead
		if err := res.Read(bufio.NewReader(bytes.NewReader(data[:a.total()]))); err != nil {
			t.Fatalf("accepted an answer fasthttp refuses: %v", err)
		}
		if res.StatusCode() != a.status || (!a.chunked && !bytes.Equal(res.Body(), data[a.Size:a.total()])) {
			t.Fatalf("read otherwise: %d %q against fasthttp's %d %q", a.status, data[a.Size:a.total()], res.StatusCode(), res.Body())
		}
		out := a.appendClient(nil, data, date, false)
		var back fasthttp.Response
		back.SkipBody = isHead
		if err := back.Read(bufio.NewReader(bytes.NewReader(out))); err != nil {
			t.Fatalf("relayed an answer fasthttp cannot read: %v\n%q", err, out)
		}
		if back.StatusCode() != a.status || !bytes.Equal(back.Body(), res.Body()) {
			t.Fatalf("relayed %d %q, want %d %q", back.StatusCode(), back.Body(), a.status, res.Body())
		}
	})
}

func fasthttpNow() time.Time { return time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC) }
