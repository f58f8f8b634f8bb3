package policies

import (
	"fmt"
	"strings"
)

// expand replaces ${VAR} and ${VAR:-default} in s with values from lookup.
// The default is used when VAR is unset or empty; an unset VAR without a default is an
// error. "$${" stands for a literal "${"; any other "$" is kept as it is.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' { // "$${": an escaped "${"
			b.WriteString(s[:i])
			b.WriteString("{")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q: expected ${VAR} or ${VAR:-default}", s[i:])
		}
		expr := s[i+2 : i+end]
		s = s[i+end+1:]
		name, def, hasDefault := strings.Cut(expr, ":-")
		if !isEnvName(name) {
			return "", fmt.Errorf("invalid ${%s}: expected ${VAR} or ${VAR:-default}, VAR made of letters, digits and _", expr)
		}
		if strings.Contains(def, "${") {
			return "", fmt.Errorf("invalid \"${%s}\": a default cannot hold another ${...}", expr)
		}
		v, ok := lookup(name)
		switch {
		case ok && v != "":
			b.WriteString(v)
		case hasDefault:
			b.WriteString(def)
		case !ok:
			return "", fmt.Errorf("environment variable %s is not set (write ${%s:-default} to give a default)", name, name)
		}
	}
}

func isEnvName(s string) bool {
	for i, c := range []byte(s) {
		letter := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}
