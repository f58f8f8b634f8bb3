package logproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// OTLPLogsPath is the path of OTLP/HTTP's logs export.
const OTLPLogsPath = "/v1/logs"

// OTLP encodings, by Content-Type.
const (
	OTLPProtobuf = "application/x-protobuf"
	OTLPJSON     = "application/json"
)

// OTLPEncoding returns the encoding a Content-Type names, or "" if neither.
func OTLPEncoding(contentType string) string {
	ct := strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
	switch ct {
	case OTLPProtobuf, OTLPJSON:
		return ct
	}
	return ""
}

// ParseOTLPLogs splits an OTLP/HTTP ExportLogsServiceRequest into one
// document per log record: each document is itself an
// ExportLogsServiceRequest, in the request's encoding, holding that record
// with its resource and its scope (and their schema URLs), so that nothing
// of the record's context is lost and documents can be joined again into
// one request (see AppendOTLPLogs). A request without records gives no
// document and no error (OTLP allows an empty export). A malformed body is
// a 400 *Error.
func ParseOTLPLogs(body []byte, encoding string) ([]Doc, error) {
	return ParseOTLPLogsLimit(body, encoding, -1)
}

// ParseOTLPLogsLimit is ParseOTLPLogs with a bound on the documents' total
// size: each record's document repeats its resource and scope, so a small
// export of many records under a large resource would take far more memory
// split than whole. Past maxTotal (if >= 0) it stops and returns
// ErrTooLarge.
func ParseOTLPLogsLimit(body []byte, encoding string, maxTotal int64) ([]Doc, error) {
	if encoding == OTLPJSON {
		return parseOTLPJSON(body, maxTotal)
	}
	return parseOTLPProto(body, maxTotal)
}

// MaxExpansion is how many times its request's size the documents of one
// request may take in all (see ParseOTLPLogsLimit; ParseLoki likewise).
const MaxExpansion = 16

func otlpError(format string, args ...any) *Error {
	return &Error{Status: 400, Type: "INVALID_ARGUMENT", Reason: fmt.Sprintf(format, args...)}
}

// splitOTLPGroup reads a ResourceLogs or a ScopeLogs, which share one
// shape: field 1 its resource or scope, field 2 its repeated children
// (ScopeLogs or LogRecords), field 3 its schema URL. Other fields are
// skipped.
func splitOTLPGroup(msg []byte) (head []byte, children [][]byte, schema []byte, err error) {
	err = eachField(msg, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			head = v
		case 2:
			children = append(children, v)
		case 3:
			schema = v
		}
		return nil
	})
	return head, children, schema, err
}

// otlpGroupSize is the size appendOTLPGroup gives a group of a child of
// childLen bytes, so that each document is allocated once at its size.
func otlpGroupSize(head []byte, childLen int, schema []byte) int {
	n := protowire.SizeTag(2) + protowire.SizeBytes(childLen)
	if head != nil {
		n += protowire.SizeTag(1) + protowire.SizeBytes(len(head))
	}
	if schema != nil {
		n += protowire.SizeTag(3) + protowire.SizeBytes(len(schema))
	}
	return n
}

// appendOTLPGroup appends to b a ResourceLogs or ScopeLogs (see
// splitOTLPGroup) of one child; a nil head or schema is left out.
func appendOTLPGroup(b, head, child, schema []byte) []byte {
	if head != nil {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, head)
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, child)
	if schema != nil {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, schema)
	}
	return b
}

func parseOTLPProto(body []byte, maxTotal int64) ([]Doc, error) {
	var docs []Doc
	var total int64
	ri := 0
	err := eachField(body, func(num protowire.Number, typ protowire.Type, rl []byte, _ uint64) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		resource, scopes, rschema, err := splitOTLPGroup(rl)
		if err != nil {
			return otlpError("resourceLogs[%d] is malformed", ri)
		}
		for si, sl := range scopes {
			scope, records, sschema, err := splitOTLPGroup(sl)
			if err != nil {
				return otlpError("resourceLogs[%d].scopeLogs[%d] is malformed", ri, si)
			}
			for li, rec := range records {
				if eachField(rec, func(protowire.Number, protowire.Type, []byte, uint64) error { return nil }) != nil {
					return otlpError("resourceLogs[%d].scopeLogs[%d].logRecords[%d] is malformed", ri, si, li)
				}
				inner := appendOTLPGroup(make([]byte, 0, otlpGroupSize(scope, len(rec), sschema)), scope, rec, sschema)
				r := appendOTLPGroup(make([]byte, 0, otlpGroupSize(resource, len(inner), rschema)), resource, inner, rschema)
				if total += int64(len(r)) + 8; maxTotal >= 0 && total > maxTotal {
					return ErrTooLarge
				}
				d := make([]byte, 0, protowire.SizeTag(1)+protowire.SizeBytes(len(r)))
				d = protowire.AppendTag(d, 1, protowire.BytesType)
				docs = append(docs, Doc{Body: protowire.AppendBytes(d, r)})
			}
		}
		ri++
		return nil
	})
	if err != nil {
		var pe *Error
		if errors.Is(err, ErrTooLarge) || errors.As(err, &pe) && pe.Type == "INVALID_ARGUMENT" {
			return nil, err
		}
		return nil, otlpError("the protobuf body is malformed")
	}
	return docs, nil
}

type otlpJSONScope struct {
	Scope      json.RawMessage   `json:"scope,omitempty"`
	LogRecords []json.RawMessage `json:"logRecords"`
	SchemaURL  string            `json:"schemaUrl,omitempty"`
}

type otlpJSONResource struct {
	Resource  json.RawMessage `json:"resource,omitempty"`
	ScopeLogs []otlpJSONScope `json:"scopeLogs"`
	SchemaURL string          `json:"schemaUrl,omitempty"`
}

type otlpJSONRequest struct {
	ResourceLogs []otlpJSONResource `json:"resourceLogs"`
}

func parseOTLPJSON(body []byte, maxTotal int64) ([]Doc, error) {
	var req otlpJSONRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, otlpError("the body is not an OTLP logs request in JSON: %s", jsonErr(err))
	}
	var docs []Doc
	var total int64
	for ri, rl := range req.ResourceLogs {
		if len(rl.Resource) > 0 && rl.Resource[0] != '{' && string(rl.Resource) != "null" {
			return nil, otlpError("resourceLogs[%d].resource is not an object", ri)
		}
		for si, sl := range rl.ScopeLogs {
			if len(sl.Scope) > 0 && sl.Scope[0] != '{' && string(sl.Scope) != "null" {
				return nil, otlpError("resourceLogs[%d].scopeLogs[%d].scope is not an object", ri, si)
			}
			for li, rec := range sl.LogRecords {
				if len(rec) == 0 || rec[0] != '{' {
					return nil, otlpError("resourceLogs[%d].scopeLogs[%d].logRecords[%d] is not an object", ri, si, li)
				}
				one := otlpJSONRequest{ResourceLogs: []otlpJSONResource{{
					Resource:  rl.Resource,
					ScopeLogs: []otlpJSONScope{{Scope: sl.Scope, LogRecords: []json.RawMessage{rec}, SchemaURL: sl.SchemaURL}},
					SchemaURL: rl.SchemaURL,
				}}}
				if total += int64(len(rl.Resource) + len(sl.Scope) + len(rec) + 64); maxTotal >= 0 && total > maxTotal {
					return nil, ErrTooLarge
				}
				b, _ := json.Marshal(one) // RawMessage is compacted by Marshal
				docs = append(docs, Doc{Body: b})
			}
		}
	}
	return docs, nil
}

// AppendOTLPLogs joins stored documents of one encoding (each an
// ExportLogsServiceRequest, from ParseOTLPLogs) into one request: in
// protobuf, by concatenation (repeated fields concatenate); in JSON, by
// joining their resourceLogs. A JSON document that is not such a request is
// an error.
func AppendOTLPLogs(dst []byte, encoding string, docs [][]byte) ([]byte, error) {
	if encoding != OTLPJSON {
		for _, d := range docs {
			dst = append(dst, d...)
		}
		return dst, nil
	}
	var all otlpJSONRequest
	for i, d := range docs {
		var r otlpJSONRequest
		if err := json.Unmarshal(d, &r); err != nil {
			return nil, fmt.Errorf("document %d is not an OTLP logs request in JSON", i)
		}
		all.ResourceLogs = append(all.ResourceLogs, r.ResourceLogs...)
	}
	b, err := json.Marshal(all)
	return append(dst, b...), err
}

// OTLPSuccess returns the body of a successful export reply: an empty
// ExportLogsServiceResponse in the request's encoding.
func OTLPSuccess(encoding string) []byte {
	if encoding == OTLPJSON {
		return []byte("{}")
	}
	return []byte{}
}

// OTLPStatus returns a google.rpc.Status body, {code, message}, in the
// request's encoding, as OTLP/HTTP answers failures (code 3
// INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE).
func OTLPStatus(encoding string, code int, msg string) []byte {
	if encoding == OTLPJSON {
		b, _ := json.Marshal(struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}{code, msg})
		return b
	}
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(code))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendString(b, msg)
}

// ParseOTLPPartial reads an ExportLogsServiceResponse's partial_success:
// how many records the server rejected (for good: OTLP says not to retry
// them) and its message. An unreadable body counts as no rejection: the
// status code already said success.
func ParseOTLPPartial(body []byte, encoding string) (rejected int64, msg string) {
	if encoding == OTLPJSON {
		var r struct {
			PartialSuccess struct {
				RejectedLogRecords json.RawMessage `json:"rejectedLogRecords"`
				ErrorMessage       string          `json:"errorMessage"`
			} `json:"partialSuccess"`
		}
		if json.Unmarshal(body, &r) != nil {
			return 0, ""
		}
		s := strings.Trim(string(r.PartialSuccess.RejectedLogRecords), `"`) // int64 is a string in OTLP JSON
		n, _ := strconv.ParseInt(s, 10, 64)
		return n, r.PartialSuccess.ErrorMessage
	}
	eachField(body, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num == 1 && typ == protowire.BytesType {
			eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.VarintType:
					rejected = int64(x)
				case num == 2 && typ == protowire.BytesType:
					msg = string(v)
				}
				return nil
			})
		}
		return nil
	})
	return rejected, msg
}

// IsOTLPJSON reports whether a stored OTLP document is JSON (else protobuf).
func IsOTLPJSON(doc []byte) bool {
	d := bytes.TrimSpace(doc)
	return len(d) > 0 && d[0] == '{'
}
