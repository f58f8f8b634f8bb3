package proxy

import (
	"bytes"
	"testing"
)

func TestNormalizeURI(t *testing.T) {
	for in, want := range map[string]string{
		"/":                      "/",
		"/api/orders?x=1":        "/api/orders?x=1",
		"/api/./orders":          "/api/orders",
		"/api/../orders":         "/orders",
		"/api/%2e%2e/orders":     "/orders",
		"/api/%2E%2e/orders":     "/orders",
		"/api%2F..%2Forders":     "/api%2F..%2Forders",
		"/api%2f..%2forders":     "/api%2F..%2Forders",
		"/api/files/a%2Fb":       "/api/files/a%2Fb",
		"/a/b/..":                "/a/",
		"/a/b/.":                 "/a/b/",
		"/..":                    "/",
		"/../../x":               "/x",
		"/a//../b":               "/a/b",
		"/a/%7e/%41":             "/a/~/A",
		"/a%20b/%e2%82%ac":       "/a%20b/%E2%82%AC",
		"/.well-known/x":         "/.well-known/x",
		"/a/..b/c":               "/a/..b/c",
		"/a?q=/../x":             "/a?q=/../x",
		"/a/../b?q=%2e#frag":     "/b?q=%2e",
		"http://h/a/../b?x":      "/b?x",
		"http://h":               "/",
		"http://h?x=1":           "/?x=1",
		"https://u@h:8/%2e/a/b/": "/a/b/",
	} {
		got, ok := normalizeURI([]byte(in))
		if !ok || string(got) != want {
			t.Errorf("normalizeURI(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"/a%", "/a%2", "/a%zz", "/%g0/b"} {
		if got, ok := normalizeURI([]byte(in)); ok {
			t.Errorf("normalizeURI(%q) = %q, want a malformed percent-encoding", in, got)
		}
	}
}

func TestNormalizeURINoCopy(t *testing.T) {
	in := []byte("/api/orders?x=1")
	got, _ := normalizeURI(in)
	if &got[0] != &in[0] {
		t.Error("an already normal URI was copied")
	}
	if n := testing.AllocsPerRun(100, func() { normalizeURI(in) }); n != 0 {
		t.Errorf("%v allocations for an already normal URI", n)
	}
}

// FuzzNormalizeURI: the result of a well-formed target is a path starting
// with "/", with no dot segment, that normalises to itself.
func FuzzNormalizeURI(f *testing.F) {
	for _, s := range []string{"/", "/api/%2e%2e/orders", "/a%2F..%2Fb?x", "/a/b/../../..", "http://h/a/./b", "/%7e/%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, ok := normalizeURI([]byte(in))
		if !ok {
			return
		}
		p := pathPart(got)
		if len(p) == 0 || p[0] != '/' {
			t.Fatalf("normalizeURI(%q) = %q: not a path", in, got)
		}
		for _, seg := range bytes.Split(p[1:], []byte("/")) {
			if string(seg) == "." || string(seg) == ".." {
				t.Fatalf("normalizeURI(%q) = %q: a dot segment is left", in, got)
			}
		}
		again, ok := normalizeURI(got)
		if !ok || !bytes.Equal(again, got) {
			t.Fatalf("normalizeURI(%q) = %q, which normalises to %q (%v)", in, got, again, ok)
		}
	})
}
