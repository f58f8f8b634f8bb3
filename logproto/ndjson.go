package logproto

import "encoding/json"

// ParseNDJSON parses a body of newline-delimited JSON: each line that is
// not blank is one document, a JSON value. A line that is not JSON refuses
// the whole request with a 400 *Error naming the line.
func ParseNDJSON(body []byte) ([]Doc, error) {
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
