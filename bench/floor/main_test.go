//go:build linux

package main

import "testing"

// TestTakeRequests: whole requests are taken (pipelined ones too), a cut
// one waits for its bytes, and a bad Content-Length is refused.
func TestTakeRequests(t *testing.T) {
	c := &conn{in: []byte("POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nde" +
		"POST /c HTTP/1.1\r\nContent-Length: 5\r\n\r\nfg")}
	batch, bad := takeRequests(c, nil)
	if bad || string(batch) != "abcde" || c.replies != 2 {
		t.Fatalf("batch %q, replies %d, bad %v; want \"abcde\", 2, false", batch, c.replies, bad)
	}
	c.in = append(c.in, "hij"...)
	if batch, _ = takeRequests(c, batch[:0]); string(batch) != "fghij" || c.replies != 3 || len(c.in) != 0 {
		t.Fatalf("after the rest: batch %q, replies %d, left %q", batch, c.replies, c.in)
	}
	for _, in := range []string{"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"} {
		if _, bad := takeRequests(&conn{in: []byte(in)}, nil); !bad {
			t.Fatalf("%q: not refused", in)
		}
	}
}
