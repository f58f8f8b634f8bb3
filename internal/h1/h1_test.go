package h1

import (
	"strings"
	"testing"
)

func TestHeadParse(t *testing.T) {
	for _, c := range []struct {
		in     string
		want   int
		fields int
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK, 1},
		{"HTTP/1.1 200 OK\r\nA: 1\r\nB:  two words \t\r\n\r\nbody", OK, 2},
		{"GET / HTTP/1.1\r\nHost: a\r\n", More, 0},
		{"GET / HTTP/1.1\nHost: a\r\n\r\n", Other, 0},    // a bare LF
		{"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", Other, 0}, // a blank in a name
		{"GET / HTTP/1.1\r\n: a\r\n\r\n", Other, 0},      // no name
		{"GET / HTTP/1.1\r\nA: \x01\r\n\r\n", Other, 0},  // a control character in a value
		{"GET /\x7f HTTP/1.1\r\n\r\n", Other, 0},         // DEL in the first line
		{"\r\n", Other, 0},                               // no first line
		{"GET / HTTP/1.1\r\n" + strings.Repeat("A: 1\r\n", MaxFields+1) + "\r\n", Other, 0},
	} {
		var h Head
		got := h.Parse([]byte(c.in))
		if got != c.want || (got == OK && h.N != c.fields) {
			t.Errorf("%q: %d with %d fields, want %d with %d", c.in, got, h.N, c.want, c.fields)
		}
		if got == OK && string(h.First) != c.in[:strings.Index(c.in, "\r\n")] {
			t.Errorf("%q: first line %q", c.in, h.First)
		}
	}
	var h Head
	h.Parse([]byte("HTTP/1.1 200 OK\r\nB:  two words \t\r\n\r\n"))
	if string(h.Fields[0].K) != "B" || string(h.Fields[0].V) != "two words" || h.Size != 36 {
		t.Errorf("field %q: %q, size %d", h.Fields[0].K, h.Fields[0].V, h.Size)
	}
}

func TestChunkedEnd(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want int
	}{
		{"5\r\nhello\r\n0\r\n\r\n", 100, 15},
		{"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\nnext", 100, 36},
		{"5\r\nhello\r\n0\r\n", 100, -1},             // the last CRLF has not come
		{"5\r\nhello\r\n0\r\nX: 1\r\n\r\n", 100, -1}, // trailers
		{"5\r\nhello\r\n0\r\n\r\n", 4, -1},           // over max
		{"g\r\nhello\r\n0\r\n\r\n", 100, -1},         // not hex
		{"5\r\nhelloXX0\r\n\r\n", 100, -1},           // no CRLF after the data
	} {
		if got := ChunkedEnd([]byte(c.in), 0, c.max); got != c.want {
			t.Errorf("%q (max %d): %d, want %d", c.in, c.max, got, c.want)
		}
	}
}

func TestParseLengthAndConnection(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "123": 123, "": -1, "1a": -1, "-1": -1, " 1": -1, "1234567890123456789": -1} {
		n, ok := ParseLength([]byte(in))
		if (want < 0) == ok || (ok && n != want) {
			t.Errorf("ParseLength(%q) = %d, %v", in, n, ok)
		}
	}
	var ci ConnInfo
	ci.Add([]byte("keep-alive, X-A"))
	ci.Add([]byte("Close"))
	if !ci.Close || !ci.Named([]byte("x-a")) || ci.Named([]byte("keep-alive")) || ci.Over {
		t.Errorf("%+v", ci)
	}
}

func TestAnswerStatusAndFraming(t *testing.T) {
	for in, want := range map[string]int{"HTTP/1.1 200 OK": 200, "HTTP/1.1 204": 204, "HTTP/1.1 100 Continue": 100,
		"HTTP/1.0 200 OK": -1, "HTTP/1.1 20 OK": -1, "HTTP/1.1 2000": -1, "HTTP/1.1 2x0 OK": -1, "http/1.1 200 OK": -1} {
		st, ok := AnswerStatus([]byte(in))
		if ok != (want >= 0) || (ok && st != want) {
			t.Errorf("AnswerStatus(%q) = %d, %v", in, st, ok)
		}
	}
	var h Head
	h.Parse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nconnection: close\r\nX-A: 1\r\n\r\n"))
	var fr Framing
	var others int
	for _, f := range h.Fields[:h.N] {
		framing, ok := fr.Add(f)
		if !ok {
			t.Fatalf("%q refused", f.K)
		}
		if !framing {
			others++
		}
	}
	if fr.Length != 5 || fr.Lengths != 1 || !fr.Conn.Close || others != 1 || fr.Ambiguous() {
		t.Errorf("%+v, %d others", fr, others)
	}
	for _, f := range []Field{{K: []byte("Transfer-Encoding"), V: []byte("gzip")}, {K: []byte("Trailer"), V: []byte("X")}, {K: []byte("Content-Length"), V: []byte("5x")}} {
		if framing, ok := new(Framing).Add(f); !framing || ok {
			t.Errorf("%s: %s taken", f.K, f.V)
		}
	}
	both := Framing{Lengths: 1, Chunked: 1}
	if !both.Ambiguous() || !(&Framing{Lengths: 2}).Ambiguous() || (&Framing{Chunked: 1}).Ambiguous() {
		t.Error("Ambiguous")
	}
}
