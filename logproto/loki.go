package logproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// LokiPushPath is the path of Loki's push API.
const LokiPushPath = "/loki/api/v1/push"

// LokiEntry is how a Loki log entry is stored: one JSON object per entry,
// its stream's labels kept with it.
type LokiEntry struct {
	Labels   map[string]string `json:"labels"`
	TS       string            `json:"ts"` // Unix nanoseconds, decimal, as Loki writes them
	Line     string            `json:"line"`
	Metadata map[string]string `json:"metadata,omitempty"` // structured metadata
}

func lokiError(format string, args ...any) *Error {
	return &Error{Status: 400, Type: "bad_request", Reason: fmt.Sprintf(format, args...)}
}

// ParseLoki parses a Loki push body into one document per entry (a
// LokiEntry as JSON). contentType picks the encoding: application/json, or
// application/x-protobuf (a PushRequest, snappy-compressed as Loki's
// clients send it; limit bounds its decoded size: ErrTooLarge past it, as
// past MaxExpansion times limit for the documents in all). A
// malformed body, a stream without labels, or an entry without a valid
// timestamp refuses the whole request with a 400 *Error.
func ParseLoki(body []byte, contentType string, limit int64) ([]Doc, error) {
	ct := strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
	var entries []LokiEntry
	var err error
	switch ct {
	case "application/x-protobuf":
		n, derr := snappy.DecodedLen(body)
		if derr != nil {
			return nil, lokiError("the protobuf body is not snappy-compressed: %v", derr)
		}
		if int64(n) > limit {
			return nil, ErrTooLarge
		}
		raw, derr := snappy.Decode(nil, body)
		if derr != nil {
			return nil, lokiError("the snappy body is corrupt: %v", derr)
		}
		entries, err = parseLokiProto(raw)
	case "", "application/json":
		entries, err = parseLokiJSON(body)
	default:
		return nil, &Error{Status: 415, Type: "unsupported_media_type", Reason: fmt.Sprintf("Content-Type %.60q: expected application/json or application/x-protobuf", contentType)}
	}
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, lokiError("the push request holds no entry")
	}
	// Each entry's document repeats its stream's labels: bound the total
	// (see MaxExpansion) before building them.
	var total int64
	for i := range entries {
		total += int64(len(entries[i].Line) + len(entries[i].TS) + 32)
		for k, v := range entries[i].Labels {
			total += int64(len(k) + len(v) + 6)
		}
		for k, v := range entries[i].Metadata {
			total += int64(len(k) + len(v) + 6)
		}
		if total > MaxExpansion*max(limit, int64(len(body))) {
			return nil, ErrTooLarge
		}
	}
	docs := make([]Doc, len(entries))
	for i := range entries {
		b, _ := json.Marshal(&entries[i]) // map keys sorted; strings made valid
		docs[i] = Doc{Body: b}
	}
	return docs, nil
}

func parseLokiJSON(body []byte) ([]LokiEntry, error) {
	var req struct {
		Streams []struct {
			Stream map[string]string   `json:"stream"`
			Values [][]json.RawMessage `json:"values"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, lokiError("the body is not a Loki push request in JSON: %v", jsonErr(err))
	}
	var out []LokiEntry
	for si, st := range req.Streams {
		if len(st.Stream) == 0 {
			return nil, lokiError("streams[%d]: at least one label pair is required per stream", si)
		}
		for vi, v := range st.Values {
			if len(v) != 2 && len(v) != 3 {
				return nil, lokiError("streams[%d].values[%d]: expected [timestamp, line] or [timestamp, line, metadata]", si, vi)
			}
			e := LokiEntry{Labels: st.Stream}
			if json.Unmarshal(v[0], &e.TS) != nil || !validTS(e.TS) {
				return nil, lokiError("streams[%d].values[%d]: the timestamp must be a string of Unix nanoseconds", si, vi)
			}
			if json.Unmarshal(v[1], &e.Line) != nil {
				return nil, lokiError("streams[%d].values[%d]: the line must be a string", si, vi)
			}
			if len(v) == 3 && json.Unmarshal(v[2], &e.Metadata) != nil {
				return nil, lokiError("streams[%d].values[%d]: structured metadata must be an object of strings", si, vi)
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// jsonErr describes a JSON error without quoting the input.
func jsonErr(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("%s where %s was expected, at byte %d", te.Value, te.Type, te.Offset)
	}
	return "malformed JSON"
}

func validTS(s string) bool {
	if s == "" || len(s) > 19 {
		return false
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

// parseLokiProto reads a logproto.PushRequest (Loki's push.proto):
// streams = 1 { labels = 1 (string), entries = 2 { timestamp = 1
// { seconds = 1, nanos = 2 }, line = 2, structuredMetadata = 3 { name = 1,
// value = 2 } }, hash = 3 }.
func parseLokiProto(b []byte) ([]LokiEntry, error) {
	var out []LokiEntry
	si := 0
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num != 1 || typ != protowire.BytesType {
			return nil // unknown fields are skipped, as protobuf does
		}
		var labels map[string]string
		var entries []LokiEntry
		err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
			switch {
			case num == 1 && typ == protowire.BytesType:
				l, err := parseLabels(string(v))
				if err != nil {
					return lokiError("streams[%d]: labels: %v", si, err)
				}
				labels = l
			case num == 2 && typ == protowire.BytesType:
				e, err := parseLokiEntry(v)
				if err != nil {
					return lokiError("streams[%d].entries[%d]: %v", si, len(entries), err)
				}
				entries = append(entries, e)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(labels) == 0 {
			return lokiError("streams[%d]: at least one label pair is required per stream", si)
		}
		for i := range entries {
			entries[i].Labels = labels
		}
		out = append(out, entries...)
		si++
		return nil
	})
	return out, err
}

func parseLokiEntry(b []byte) (LokiEntry, error) {
	var e LokiEntry
	var secs, nanos int64
	hasTS := false
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			hasTS = true
			return eachField(v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
				if typ == protowire.VarintType {
					switch num {
					case 1:
						secs = int64(x)
					case 2:
						nanos = int64(int32(x))
					}
				}
				return nil
			})
		case num == 2 && typ == protowire.BytesType:
			e.Line = string(v)
		case num == 3 && typ == protowire.BytesType:
			var name, value string
			if err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if typ == protowire.BytesType {
					switch num {
					case 1:
						name = string(v)
					case 2:
						value = string(v)
					}
				}
				return nil
			}); err != nil {
				return err
			}
			if e.Metadata == nil {
				e.Metadata = map[string]string{}
			}
			e.Metadata[name] = value
		}
		return nil
	})
	if err != nil {
		return e, err
	}
	if !hasTS || nanos < 0 || nanos >= 1e9 || secs < 0 || secs > 1<<33 {
		return e, fmt.Errorf("the entry has no valid timestamp")
	}
	e.TS = strconv.FormatInt(time.Unix(secs, nanos).UnixNano(), 10)
	return e, nil
}

// eachField calls fn for each field of a protobuf message: v is the bytes
// of a length-delimited field, x the value of a varint or fixed one.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return lokiError("the protobuf body is malformed")
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x32 uint32
			x32, n = protowire.ConsumeFixed32(b)
			x = uint64(x32)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return lokiError("the protobuf body is malformed")
		}
		b = b[n:]
		if err := fn(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// parseLabels parses a Prometheus label set as Loki's protobuf carries it:
// {name="value", other="v\"2"}.
func parseLabels(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, fmt.Errorf("expected {name=\"value\", ...}")
	}
	s = strings.TrimSpace(s[1 : len(s)-1])
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("expected name=\"value\"")
		}
		name := strings.TrimSpace(s[:eq])
		rest := strings.TrimSpace(s[eq+1:])
		if rest == "" || rest[0] != '"' {
			return nil, fmt.Errorf("the value of label %.40q is not quoted", name)
		}
		end := 1
		for end < len(rest) && rest[end] != '"' {
			if rest[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(rest) {
			return nil, fmt.Errorf("the value of label %.40q is not closed", name)
		}
		v, err := strconv.Unquote(rest[:end+1])
		if err != nil {
			return nil, fmt.Errorf("the value of label %.40q is not a valid string", name)
		}
		out[name] = v
		s = strings.TrimSpace(rest[end+1:])
		if s != "" {
			if s[0] != ',' {
				return nil, fmt.Errorf("expected a comma after label %.40q", name)
			}
			s = strings.TrimSpace(s[1:])
		}
	}
	return out, nil
}

// LokiDoc is a stored document to push: Entry is true for a LokiEntry
// stored by a loki route; any other document becomes an entry of the
// stream {source="sluice"} with the document as its line, at At.
type LokiDoc struct {
	Body  []byte
	At    time.Time
	Entry bool
}

// AppendLokiPush appends to dst a Loki push request in JSON carrying the
// documents, grouped into streams by their labels (in the order each label
// set first appears).
func AppendLokiPush(dst []byte, docs []LokiDoc) []byte {
	type stream struct {
		labels map[string]string
		values [][]any
	}
	var order []string
	streams := map[string]*stream{}
	for _, d := range docs {
		var e LokiEntry
		if !d.Entry || json.Unmarshal(d.Body, &e) != nil || len(e.Labels) == 0 || !validTS(e.TS) {
			e = LokiEntry{Labels: map[string]string{"source": "sluice"}, TS: strconv.FormatInt(d.At.UnixNano(), 10), Line: validUTF8(d.Body)}
		}
		keys := make([]string, 0, len(e.Labels))
		for k := range e.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var key strings.Builder
		for _, k := range keys {
			key.WriteString(k + "\x00" + e.Labels[k] + "\x00")
		}
		st := streams[key.String()]
		if st == nil {
			st = &stream{labels: e.Labels}
			streams[key.String()] = st
			order = append(order, key.String())
		}
		v := []any{e.TS, e.Line}
		if len(e.Metadata) > 0 {
			v = append(v, e.Metadata)
		}
		st.values = append(st.values, v)
	}
	type out struct {
		Stream map[string]string `json:"stream"`
		Values [][]any           `json:"values"`
	}
	req := struct {
		Streams []out `json:"streams"`
	}{}
	for _, k := range order {
		req.Streams = append(req.Streams, out{streams[k].labels, streams[k].values})
	}
	b, _ := json.Marshal(req)
	return append(dst, b...)
}

func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
