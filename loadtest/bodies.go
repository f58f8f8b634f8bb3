package loadtest

import (
	"bytes"
	"errors"
	"strconv"
)

// SeqPlaceholder in a body template is replaced with the request's
// sequence number (1 for the first request of a run).
const SeqPlaceholder = "{{seq}}"

// TemplateBody returns a GenConfig.Body that sends tmpl with every
// SeqPlaceholder replaced by the sequence number. A template without the
// placeholder is sent as it is.
func TemplateBody(tmpl []byte) func(seq uint64) []byte {
	tmpl = bytes.Clone(tmpl)
	parts := bytes.Split(tmpl, []byte(SeqPlaceholder))
	if len(parts) == 1 {
		return func(uint64) []byte { return tmpl }
	}
	return func(seq uint64) []byte {
		n := strconv.AppendUint(nil, seq, 10)
		return bytes.Join(parts, n)
	}
}

// LinesBody returns a GenConfig.Body that sends the non-empty lines of data
// in turn, from the first again after the last: a file of requests, such
// as NDJSON. Each line is a template, as in TemplateBody.
func LinesBody(data []byte) (func(seq uint64) []byte, error) {
	var bodies []func(uint64) []byte
	for line := range bytes.Lines(data) {
		line = bytes.TrimRight(line, "\r\n")
		if len(bytes.TrimSpace(line)) > 0 {
			bodies = append(bodies, TemplateBody(line))
		}
	}
	if len(bodies) == 0 {
		return nil, errors.New("no requests: the file has no non-empty line")
	}
	return func(seq uint64) []byte {
		return bodies[(seq-1)%uint64(len(bodies))](seq)
	}, nil
}
