package policies

import (
	"strconv"
	"strings"
)

// Error is one problem in a policy file.
type Error struct {
	File  string
	Line  int    // 1-based; 0 if unknown
	Field string // path like "routes[0].targets[1].rate"; "" for the file as a whole
	Msg   string // what is wrong and what is expected
	Err   error  // the underlying cause, if any (e.g. from reading the file)
}

// Error formats as "policy.yaml:12: routes[0].targets[1].rate: invalid rate ...".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errors lists every problem found in a policy file, in line order.
// Load and Parse return it as *Errors.
type Errors []*Error

// Error joins the problems one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is and errors.As look at each problem.
func (es Errors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}

// As lets errors.As fill a plain Errors as well as an *Errors.
func (es *Errors) As(target any) bool {
	if p, ok := target.(*Errors); ok {
		*p = *es
		return true
	}
	return false
}
