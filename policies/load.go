package policies

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses a policy file, applies defaults and validates it.
// On failure it returns an error of type *Errors listing every problem found.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			msg = pe.Err.Error()
		}
		return nil, &Errors{{File: path, Msg: "cannot read policy file: " + msg, Err: err}}
	}
	return Parse(path, data)
}

// Parse is Load on bytes; file is used in messages only.
// ${VAR} and ${VAR:-default} in values are expanded from the process environment.
func Parse(file string, data []byte) (*Policy, error) {
	return ParseWith(file, data, os.LookupEnv)
}

// ParseWith is Parse with the environment given by lookup, which has the signature of
// os.LookupEnv.
func ParseWith(file string, data []byte, lookup func(string) (string, bool)) (*Policy, error) {
	d := &decoder{file: file, lookup: lookup}
	var p *Policy
	if root := d.document(data); root != nil {
		p = d.policy(root)
	}
	if len(d.errs) > 0 {
		slices.SortStableFunc(d.errs, func(a, b *Error) int { return a.Line - b.Line })
		return nil, &d.errs
	}
	p.Warnings = d.warns
	return p, nil
}

// maxNodes bounds the size of a document with its aliases expanded, so that a few lines
// of nested aliases cannot make parsing take forever.
const maxNodes = 1 << 20

// decoder walks a YAML node tree and collects every problem it meets.
type decoder struct {
	file   string
	lookup func(string) (string, bool)
	errs   Errors
	warns  Errors // what is allowed but likely a mistake: Policy.Warnings
}

func (d *decoder) warnf(line int, field, format string, args ...any) {
	d.warns = append(d.warns, &Error{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) errorf(line int, field, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
var yamlAnchor = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)

// document parses data into the top-level mapping node, or reports why it cannot.
func (d *decoder) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, extra yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			d.errorf(0, "", "empty policy file: expected at least listen, storage or routes")
		} else {
			d.syntaxError(data, err)
		}
		return nil
	}
	if err := dec.Decode(&extra); err != io.EOF {
		if err != nil {
			d.syntaxError(data, err)
		} else {
			d.errorf(extra.Line, "", "a second YAML document (after ---): a policy file holds one")
		}
		return nil
	}
	if len(doc.Content) == 0 {
		d.errorf(0, "", "empty policy file: expected at least listen, storage or routes")
		return nil
	}
	root := doc.Content[0]
	if isNull(root) {
		d.errorf(root.Line, "", "empty policy file: expected at least listen, storage or routes")
		return nil
	}
	if line, cycle := expandedSize(root); cycle {
		d.errorf(line, "", "an alias refers to the node that holds it, which would make the document infinite")
		return nil
	} else if line >= 0 {
		d.errorf(line, "", "aliases expand the document to more than %d nodes", maxNodes)
		return nil
	}
	return root
}

// parserProblems are the problems the YAML parser (as opposed to its
// scanner) reports. The yaml package counts a scanner error's line from 1
// and a parser error's from 0 (its decode.go, parser.fail), so a policy with
// a key indented one space too little was reported one line early.
var parserProblems = []string{
	"did not find expected <document start>",
	"did not find expected key",
	"did not find expected '-' indicator",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected node content",
	"found undefined tag handle",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
}

func parserProblem(msg string) bool { return slices.Contains(parserProblems, msg) }

// syntaxError reports a YAML parser error, with its line when the parser gives one.
func (d *decoder) syntaxError(data []byte, err error) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		if parserProblem(m[2]) {
			line++ // the yaml package gives a parser error's line counted from 0
		}
		d.errorf(line, "", "invalid YAML: %s", m[2])
		return
	}
	line := 0
	if m := yamlAnchor.FindStringSubmatch(msg); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line = 1 + bytes.Count(data[:i], []byte("\n"))
		}
	}
	d.errorf(line, "", "invalid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
}

// expandedSize checks the size of root once aliases are expanded. It returns the line of
// a node that makes it larger than maxNodes, or infinite (cycle is then true: an alias
// inside the node it names); line is -1 if all is well.
func expandedSize(root *yaml.Node) (line int, cycle bool) {
	const open = -1
	size := map[*yaml.Node]int{}
	bad := -1
	var walk func(n *yaml.Node) int
	walk = func(n *yaml.Node) int {
		if s, seen := size[n]; seen {
			if s == open && !cycle {
				bad, cycle = n.Line, true
			}
			if s == open {
				return maxNodes + 1
			}
			return s
		}
		size[n] = open
		s := 1
		if n.Alias != nil {
			s += walk(n.Alias)
		}
		for _, c := range n.Content {
			s = min(s+walk(c), maxNodes+1)
		}
		if s > maxNodes && bad < 0 {
			bad = n.Line
		}
		size[n] = s
		return s
	}
	walk(root)
	return bad, cycle
}

// resolve follows aliases to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return strconv.Quote(v)
	}
	return "something else"
}

// mapping is a YAML mapping checked against the keys allowed at its place.
type mapping struct {
	path string                // field path of the mapping, "" at the top level
	line int                   // line of the mapping
	vals map[string]*yaml.Node // values of keys that are set: aliases resolved, scalars expanded
	bad  map[string]bool       // keys present but already reported as wrong
}

func (m *mapping) field(key string) string {
	if m.path == "" {
		return key
	}
	return m.path + "." + key
}

// has reports whether key was written, with a valid value or not.
func (m *mapping) has(key string) bool {
	_, ok := m.vals[key]
	return ok || m.bad[key]
}

// mapping checks that n is a mapping of known keys and collects their values. where names
// the place in messages ("route"). A key set to null or to an empty string counts as
// absent. Keys may come from YAML merge keys (<<: *defaults); keys written in the mapping
// itself win. It returns nil if n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, path, where string, keys ...string) *mapping {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, path, "expected a mapping with keys %s, got %s", strings.Join(keys, ", "), describe(n))
		return nil
	}
	m := &mapping{path: path, line: n.Line, vals: map[string]*yaml.Node{}, bad: map[string]bool{}}
	d.collect(m, n, where, keys, map[*yaml.Node]bool{}, nil)
	return m
}

// collect adds the keys of n to m. Keys in outer (those of the mapping that merges n)
// are left alone.
func (d *decoder) collect(m *mapping, n *yaml.Node, where string, keys []string, visited map[*yaml.Node]bool, outer map[string]int) {
	seen := map[string]int{}
	visited[n] = true
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.errorf(k.Line, m.path, "a key must be a plain word, got %s", describe(k))
			continue
		}
		if k.Tag == "!!merge" {
			merges = append(merges, v)
			continue
		}
		key := k.Value
		if _, ok := outer[key]; ok {
			continue
		}
		if !slices.Contains(keys, key) {
			d.unknownKey(k, m.field(key), where, keys)
			continue
		}
		if line, dup := seen[key]; dup {
			d.errorf(k.Line, m.field(key), "duplicate key %q; first set at line %d", key, line)
			continue
		}
		seen[key] = k.Line
		d.set(m, key, v)
	}
	// Merged keys fill in what the mapping does not set; earlier merges win.
	for _, v := range merges {
		srcs := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			srcs = v.Content
		}
		for _, src := range srcs {
			src = resolve(src)
			if src.Kind != yaml.MappingNode {
				d.errorf(src.Line, m.path, "<< merges a mapping or a list of mappings, got %s", describe(src))
				continue
			}
			if visited[src] {
				continue
			}
			d.collect(m, src, where, keys, visited, seen)
		}
	}
}

// set records the value of key unless it is already set (by the mapping or an earlier merge).
func (d *decoder) set(m *mapping, key string, v *yaml.Node) {
	if m.has(key) || isNull(v) {
		return
	}
	if v.Kind == yaml.ScalarNode {
		s, err := expand(v.Value, d.lookup)
		if err != nil {
			d.errorf(v.Line, m.field(key), "%v", err)
			m.bad[key] = true
			return
		}
		if s = strings.TrimSpace(s); s == "" {
			return
		}
		expanded := *v
		expanded.Value = s
		v = &expanded
	}
	m.vals[key] = v
}

func (d *decoder) unknownKey(k *yaml.Node, field, where string, keys []string) {
	hint := ""
	for _, key := range keys {
		if editDistance(k.Value, key) <= 2 {
			hint = fmt.Sprintf(" (did you mean %s?)", key)
			break
		}
	}
	d.errorf(k.Line, field, "unknown key %q in %s%s; expected one of %s", k.Value, where, hint, strings.Join(keys, ", "))
}

// text returns the scalar value of key. It reports a missing key when need, which says
// what is expected, is not empty; ok is false unless a value is there.
func (d *decoder) text(m *mapping, key, need string) (s string, line int, ok bool) {
	n, ok := m.vals[key]
	if !ok {
		if need != "" && !m.bad[key] {
			d.errorf(m.line, m.field(key), "required: %s", need)
		}
		return "", 0, false
	}
	if n.Kind != yaml.ScalarNode {
		d.errorf(n.Line, m.field(key), "expected a single value, got %s", describe(n))
		m.bad[key] = true
		return "", 0, false
	}
	return n.Value, n.Line, true
}

// field parses the scalar value of key into dst; see text for need. It reports whether
// dst was set.
func field[T any](d *decoder, m *mapping, key, need string, parse func(string) (T, error), dst *T) bool {
	s, line, ok := d.text(m, key, need)
	if !ok {
		return false
	}
	v, err := parse(s)
	if err != nil {
		d.errorf(line, m.field(key), "%v", err)
		m.bad[key] = true
		return false
	}
	*dst = v
	return true
}

// list returns the items of the list at key, aliases resolved; nil if key is absent or
// not a list (reported).
func (d *decoder) list(m *mapping, key string) []*yaml.Node {
	n, ok := m.vals[key]
	if !ok {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, m.field(key), "expected a list, got %s", describe(n))
		m.bad[key] = true
		return nil
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
	}
	return items
}

// item returns the expanded scalar text of a list item at path; ok is false if it is not
// a scalar (reported).
func (d *decoder) item(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n.Line, path, "expected a single value, got %s", describe(n))
		return "", false
	}
	s, err := expand(n.Value, d.lookup)
	if err != nil {
		d.errorf(n.Line, path, "%v", err)
		return "", false
	}
	return strings.TrimSpace(s), true
}

// editDistance is the Levenshtein distance between a and b, for "did you mean" hints.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
