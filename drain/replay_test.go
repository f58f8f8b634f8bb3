package drain

import (
	"bufio"
	"bytes"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/valyala/fasthttp"
)

func TestRequestURI(t *testing.T) {
	tests := []struct {
		target, stored, want string
	}{
		{"http://h", "/api/orders?x=1", "/api/orders?x=1"},
		{"http://h/", "/api/orders?x=1", "/api/orders?x=1"},
		{"http://h/base", "/api/orders?x=1", "/base/api/orders?x=1"},
		{"http://h/base/", "/api/orders?x=1", "/base/api/orders?x=1"},
		{"http://h/base", "api/orders", "/base/api/orders"},
		{"http://h/base", "/", "/base/"},
		{"http://h", "/", "/"},
		{"http://h", "", "/"},
		{"http://h/base", "?x=1", "/base/?x=1"},
		{"http://h/base", "//double/slash", "/base//double/slash"},
		{"http://h/base", "/a%2Fb/c?q=%20&r", "/base/a%2Fb/c?q=%20&r"},
		{"http://h/b%20ase", "/x", "/b%20ase/x"},
		{"http://h/base?key=k", "/x?y=1", "/base/x?y=1&key=k"},
		{"http://h/base?key=k", "/x", "/base/x?key=k"},
		{"http://h/base", "http://client.example/api?x=1", "/base/api?x=1"},
		{"http://h/base", "http://client.example", "/base/"},
		{"http://h/base", "/a#frag", "/base/a"},
		{"http://h/base", "/a?b=http://x", "/base/a?b=http://x"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.target)
		if err != nil {
			t.Fatal(err)
		}
		e := newEndpoint(u)
		if got := e.requestURI(tt.stored); got != tt.want {
			t.Errorf("target %s, stored %q: got %q, want %q", tt.target, tt.stored, got, tt.want)
		}
	}
}

func TestEndpoint(t *testing.T) {
	tests := []struct {
		url, addr, host string
	}{
		{"http://h", "h:80", "h"},
		{"https://h", "h:443", "h"},
		{"http://h:8081/x", "h:8081", "h:8081"},
		{"http://[::1]:9/x", "[::1]:9", "[::1]:9"},
		{"https://[::1]", "[::1]:443", "[::1]"},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.url)
		e := newEndpoint(u)
		if e.addr != tt.addr || e.host != tt.host {
			t.Errorf("%s: addr %q host %q, want %q %q", tt.url, e.addr, e.host, tt.addr, tt.host)
		}
	}
}

func TestForwardHeaders(t *testing.T) {
	in := []buffer.Header{
		hdr("Content-Type", "application/json"),
		hdr("connection", "keep-alive, X-Hop , x-other"),
		hdr("Connection", "X-Third"),
		hdr("X-Hop", "1"),
		hdr("x-other", "2"),
		hdr("x-third", "3"),
		hdr("Keep-Alive", "timeout=5"),
		hdr("Proxy-Connection", "keep-alive"),
		hdr("Proxy-Authorization", "Basic xyz"),
		hdr("Proxy-Authenticate", "Basic"),
		hdr("TE", "trailers"),
		hdr("Trailer", "X-T"),
		hdr("Transfer-Encoding", "chunked"),
		hdr("Upgrade", "websocket"),
		hdr("Expect", "100-continue"),
		hdr("Host", "client.example"),
		hdr("Content-Length", "999"),
		hdr("x-sluice-id", "forged"),
		hdr("X-Sluice-Attempt", "99"),
		hdr("X-SLUICE-ENQUEUED-AT", "never"),
		hdr("idempotency-key", "k"),
		hdr("x-custom", "a"),
		hdr("X-Custom", "b"),
		hdr("Authorization", "Bearer t"),
	}
	want := []buffer.Header{
		hdr("Content-Type", "application/json"),
		hdr("x-custom", "a"),
		hdr("X-Custom", "b"),
		hdr("Authorization", "Bearer t"),
	}
	if got := forwardHeaders(in); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

// TestBuildRequest checks the bytes of a replayed request.
func TestBuildRequest(t *testing.T) {
	u, _ := url.Parse("https://down.example:8443/base")
	e := newEndpoint(u)
	id := mustID(t, "0000000000000007abcdefghjk")
	d := &buffer.Delivery{
		Message: &buffer.Message{
			ID:         id,
			EnqueuedAt: time.Date(2025, 3, 4, 5, 6, 7, 890, time.FixedZone("X", 3600)),
			Method:     "PUT",
			URI:        "/api/orders/1?x=1",
			Header: []buffer.Header{
				hdr("content-type", "application/json"),
				hdr("x-lower-case", "v"),
				hdr("Connection", "close"),
				hdr("Host", "client.example"),
			},
			Body: []byte(`{"a":1}`),
		},
		Attempt: 2,
	}
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	buildRequest(req, &e, d)
	if !bytes.Equal(req.URI().Scheme(), []byte("https")) {
		t.Errorf("scheme %q", req.URI().Scheme())
	}
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := req.Write(w); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	got := buf.String()
	for _, want := range []string{
		"PUT /base/api/orders/1?x=1 HTTP/1.1\r\n",
		"Host: down.example:8443\r\n",
		"Content-Type: application/json\r\n",
		"x-lower-case: v\r\n",
		"Content-Length: 7\r\n",
		"X-Sluice-Id: " + id.String() + "\r\n",
		"X-Sluice-Attempt: 2\r\n",
		"X-Sluice-Enqueued-At: 2025-03-04T04:06:07.00000089Z\r\n",
		"Idempotency-Key: " + id.String() + "\r\n",
		"\r\n\r\n{\"a\":1}",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("request lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"client.example", "Connection", "User-Agent"} {
		if strings.Contains(got, bad) {
			t.Errorf("request has %q:\n%s", bad, got)
		}
	}

	d.IdempotencyKey = "client-key"
	req.Reset()
	buildRequest(req, &e, d)
	if got := string(req.Header.Peek(HeaderIdempotencyKey)); got != "client-key" {
		t.Errorf("Idempotency-Key %q, want the client's", got)
	}
}

func mustID(t testing.TB, s string) buffer.ID {
	t.Helper()
	id, err := buffer.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func hdr(name, value string) buffer.Header { return buffer.Header{Name: name, Value: value} }
