package policies

import (
	"strings"
	"testing"
)

// A HEC token is a secret: an error about one says what is wrong with it
// and where, never the token itself.
func TestHECTokenErrorsKeepTheSecret(t *testing.T) {
	for _, token := range []string{"secret one", "secret\ttab", "secret\x01ctl", "sécret", "secret\x7f"} {
		_, err := ParseWith("p.yaml", []byte(`routes:
  - name: hec
    match: { path: /hec }
    protocol: splunk-hec
    hec_tokens: ["${TOKEN}", ok-token, ok-token]
    targets:
      - name: store
        url: http://127.0.0.1:8097
`), func(name string) (string, bool) { return token, name == "TOKEN" })
		if err == nil {
			t.Fatalf("token %q: no error", token)
		}
		msg := err.Error()
		if !strings.Contains(msg, "routes[0].hec_tokens[0]: the token has a") || !strings.Contains(msg, "routes[0].hec_tokens[2]: the same token as hec_tokens[1]") {
			t.Errorf("token %q: %s", token, msg)
		}
		if strings.Contains(msg, "secret") || strings.Contains(msg, "ok-token") {
			t.Errorf("token %q: the error quotes the token: %s", token, msg)
		}
	}
}
