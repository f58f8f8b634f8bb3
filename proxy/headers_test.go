package proxy

import (
	"github.com/sluice-proxy/sluice/internal/hop"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// stripHop and stripHopResponse skip their deletions when one pass finds no
// hop-by-hop header (anyHop): each hop-by-hop name, in any case and alone
// among ordinary headers, must still be found and removed, with the headers
// Connection names; ordinary headers stay.
func TestStripHopFindsEachHopHeader(t *testing.T) {
	spellings := func(name string) []string {
		return []string{name, strings.ToLower(name), strings.ToUpper(name)}
	}
	check := func(t *testing.T, kind string, all func(yield func(k, v []byte) bool), hop string) {
		t.Helper()
		for k := range all {
			if strings.EqualFold(string(k), hop) || strings.EqualFold(hop, "Connection") && strings.EqualFold(string(k), "X-Named") {
				t.Errorf("%s: %s survived stripping", kind, k)
			}
		}
	}
	for _, name := range hop.Names {
		for _, sp := range spellings(name) {
			value := "x"
			switch strings.ToLower(name) {
			case "transfer-encoding":
				continue // framing: checked below with a chunked body
			case "connection":
				value = "X-Named"
			}
			raw := "GET /a HTTP/1.1\r\nHost: h\r\nX-Keep: 1\r\n" + sp + ": " + value + "\r\nX-Named: 2\r\n\r\n"
			var req fasthttp.Request // the listener normalises names
			if err := req.Header.Read(bufioReader(raw)); err != nil {
				t.Fatalf("%q: %v", raw, err)
			}
			stripHop(&req.Header)
			check(t, "request with "+sp, req.Header.All(), name)
			if string(req.Header.Peek("X-Keep")) != "1" {
				t.Errorf("request with %s: X-Keep lost", sp)
			}

			rawRes := "HTTP/1.1 200 OK\r\nX-Keep: 1\r\n" + sp + ": " + value + "\r\nX-Named: 2\r\nContent-Length: 0\r\n\r\n"
			var res fasthttp.Response
			res.Header.DisableNormalizing() // as the upstream pool reads it
			if err := res.Header.Read(bufioReader(rawRes)); err != nil {
				t.Fatalf("%q: %v", rawRes, err)
			}
			stripHopResponse(&res.Header)
			check(t, "response with "+sp, res.Header.All(), name)
			if string(res.Header.Peek("X-Keep")) != "1" {
				t.Errorf("response with %s: X-Keep lost", sp)
			}
		}
	}
	var req fasthttp.Request
	if err := req.Header.Read(bufioReader("POST /a HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	stripHop(&req.Header)
	if v := req.Header.Peek("Transfer-Encoding"); len(v) > 0 {
		t.Errorf("request: Transfer-Encoding %q survived stripping", v)
	}
	// Nothing to strip: nothing changes.
	if err := req.Header.Read(bufioReader("GET /a HTTP/1.1\r\nHost: h\r\nX-Keep: 1\r\nContent-Type: a/b\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	before := req.Header.String()
	stripHop(&req.Header)
	if after := req.Header.String(); after != before {
		t.Errorf("a request without hop-by-hop headers changed:\n%s\n%s", before, after)
	}
}
