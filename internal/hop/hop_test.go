package hop

import "testing"

func TestIs(t *testing.T) {
	for _, n := range Names {
		for _, spelled := range []string{n, lower(n), upper(n)} {
			if !Is([]byte(spelled)) || !IsString(spelled) {
				t.Errorf("%q is hop-by-hop", spelled)
			}
		}
	}
	for _, n := range []string{"", "Host", "Content-Type", "X-Upgrade", "Transfer-Encodings", "Authorization", "Connectionx"} {
		if Is([]byte(n)) || IsString(n) {
			t.Errorf("%q is end-to-end", n)
		}
	}
}

func TestTokens(t *testing.T) {
	var got []string
	Tokens([]byte(" close, X-Foo ,,keep-alive"), func(tok []byte) { got = append(got, string(tok)) })
	if len(got) != 3 || got[0] != "close" || got[1] != "X-Foo" || got[2] != "keep-alive" {
		t.Fatalf("tokens %q", got)
	}
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
	return string(b)
}
