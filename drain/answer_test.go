package drain

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/h1"
)

// FuzzLoopAnswer holds the delivery loop's answer parser (answer.go) to
// fasthttp's reading of the same bytes: an answer the loop reads itself
// fasthttp reads too, with the same status, the same end of the head and
// of the body, the same Connection: close and the same Retry-After, so the
// two paths judge it alike (TestLoopParity compares them end to end).
func FuzzLoopAnswer(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n",
		"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 429 Slow down\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\nRetry-After: 5\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
		"HTTP/1.1 201\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, isHead bool) {
		var a loopAnswer
		if a.parse(data, isHead) != h1.OK {
			return
		}
		end := min(a.Size+a.length, len(data)) // a sized body may still be coming
		var res fasthttp.Response
		res.SkipBody = isHead
		res.Header.DisableNormalizing()
		br := bufio.NewReader(bytes.NewReader(data[:end]))
		var err error
		if a.Size+a.length <= len(data) {
			err = res.Read(br)
		} else {
			err = res.Header.Read(br)
			end = a.Size
		}
		if err != nil {
			t.Fatalf("accepted an answer fasthttp refuses: %v", err)
		}
		if used := end - br.Buffered(); used != end {
			t.Fatalf("the answer ends at %d; fasthttp read %d bytes", end, used)
		}
		if res.StatusCode() != a.status || res.ConnectionClose() != a.close {
			t.Fatalf("status %d, close %v; fasthttp: %d, %v", a.status, a.close, res.StatusCode(), res.ConnectionClose())
		}
		var ra []byte
		for k, v := range res.Header.All() {
			if bytes.EqualFold(k, []byte("Retry-After")) {
				ra = v
				break
			}
		}
		if !bytes.Equal(ra, a.retryAfter) {
			t.Fatalf("Retry-After %q; fasthttp: %q", a.retryAfter, ra)
		}
	})
}
