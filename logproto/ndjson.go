package logproto

import (
	"bytes"
	"encoding/json"
)

// ParseNDJSON parses a body of newline-delimited JSON: each line that is
// not blank is one document, a JSON value. A body that is one JSON array
// (on one line or many: Fluent Bit's and Vector's http outputs send their
// records so) gives its elements instead, each compacted to one line. A
// line that is not JSON refuses the whole request with a 400 *Error naming
// the line.
func ParseNDJSON(body []byte) ([]Doc, error) {
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '[' && json.Valid(t) {
		var elems []json.RawMessage
		if err := json.Unmarshal(t, &elems); err == nil {
			if len(elems) == 0 {
				return nil, badRequest("bad_document", "the body is an empty JSON array")
			}
			docs := make([]Doc, len(elems))
			for i, e := range elems {
				docs[i] = Doc{Body: compact(e)}
			}
			return docs, nil
		}
	}
	var docs []Doc
	err := lines(body, func(n int, line []byte) error {
		if !validJSON(line) {
			return badRequest("bad_document", "line %d is not JSON", n)
		}
		docs = append(docs, Doc{Body: line})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, badRequest("bad_document", "the body holds no document")
	}
	return docs, nil
}

// validJSON reports whether b is one JSON value.
func validJSON(b []byte) bool { return json.Valid(b) }
