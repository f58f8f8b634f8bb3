package logproto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// HeaderProtocol is stored with every document of a log protocol route:
// the route's protocol, so that delivery knows the document's shape (a HEC
// event envelope, a Loki entry, an OTLP export) without guessing it from
// the bytes.
const HeaderProtocol = "X-Sluice-Protocol"

// Headers under which a stored Elasticsearch document keeps its action, so
// that delivery can rebuild the action line. They are the one place these
// names are written.
const (
	HeaderOp   = "X-Sluice-Es-Op"   // "index" or "create"
	HeaderMeta = "X-Sluice-Es-Meta" // the action's metadata, a JSON object with _index and without _id
	HeaderID   = "X-Sluice-Es-Id"   // the action's own _id, as raw JSON; absent if it had none
)

// Elasticsearch bulk operations. sluice stores index and create. update
// and delete are parsed (update with its document line, delete without
// one) and answered as failed items, 400 illegal_argument_exception, and
// not stored: they change documents already in the store, and a buffer
// that retries failed items alone cannot keep them in order with the
// inserts it holds (an update retried after a later delete would bring a
// document back). The other items of the request are stored as usual.
const (
	OpIndex  = "index"
	OpCreate = "create"
	OpUpdate = "update"
	OpDelete = "delete"
)

// RefusedType is the error type of the reply item of an action sluice does
// not store (Doc.Refused).
const RefusedType = "illegal_argument_exception"

// Doc is one document of an ingest request.
type Doc struct {
	Op    string // elasticsearch: OpIndex or OpCreate; "" otherwise
	Index string // elasticsearch: the target index (the action's, else the URL's)
	Meta  []byte // elasticsearch: the action's metadata, with _index, without _id (HeaderMeta)
	ID    []byte // elasticsearch: the action's own _id, raw JSON; nil if none
	Body  []byte // the document: one line of JSON; aliases the request body

	// Refused (elasticsearch) says why this action is answered as a failed
	// item and not stored: update and delete. Op, Index and ID are set for
	// its reply item; Meta and Body are not.
	Refused string
}

// Error is a request refused in a protocol's own way: Status is the HTTP
// status, Type and Reason go into the protocol's error body. Reason names
// what is wrong and where (a line number), never the request's bytes.
type Error struct {
	Status int
	Type   string
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Type, e.Reason) }

func badRequest(typ, format string, args ...any) *Error {
	return &Error{Status: 400, Type: typ, Reason: fmt.Sprintf(format, args...)}
}

// lines calls fn for each line of body (without its \n or \r\n) that is not
// blank, with its 1-based line number; it stops at the first error.
func lines(body []byte, fn func(n int, line []byte) error) error {
	n := 0
	for len(body) > 0 {
		n++
		line := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			body = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	return nil
}

// jsonObject reports whether b is one valid JSON object.
func jsonObject(b []byte) bool {
	return len(b) > 1 && b[0] == '{' && validJSON(b)
}

// ParseBulk parses an Elasticsearch _bulk body into its documents.
// defaultIndex is the index named in the URL (/{index}/_bulk), or "". Each
// index, create or update action must be followed by its document, a JSON
// object; delete has none. update and delete come back with Refused set
// (see OpUpdate). An unknown action, a line that is not JSON, or an action
// without an index refuses the whole request with a 400 *Error.
func ParseBulk(body []byte, defaultIndex string) ([]Doc, error) {
	return ParseBulkWith(body, BulkDefaults{Index: defaultIndex})
}

// BulkDefaults are what a _bulk URL says for every action that does not say
// it itself: /{index}/_bulk, ?pipeline=, ?routing= (Fluent Bit sends its
// Pipeline option this way). They are written into each stored action, so
// that delivery, which posts to its own URL, keeps them.
type BulkDefaults struct {
	Index, Pipeline, Routing string
}

// ParseBulkWith is ParseBulk with the URL's defaults.
func ParseBulkWith(body []byte, def BulkDefaults) ([]Doc, error) {
	return AppendBulk(nil, body, def)
}

// AppendBulk is ParseBulkWith appending the documents to dst (a caller's
// reused slice); on error it returns nil.
func AppendBulk(dst []Doc, body []byte, def BulkDefaults) ([]Doc, error) {
	docs := dst[:0]
	if n := bytes.Count(body, []byte{'\n'})/2 + 1; cap(docs) < n {
		docs = make([]Doc, 0, n)
	}
	var pending Doc // an action waiting for its document, when pendingLine > 0
	pendingLine := 0
	var prevAction []byte // the last action line parsed, and its result
	var prevDoc Doc
	err := lines(body, func(n int, line []byte) error {
		if pendingLine > 0 {
			if !jsonObject(line) {
				return badRequest("mapper_parsing_exception", "line %d: the document of the %s action on line %d is not a JSON object", n, pending.Op, pendingLine)
			}
			if pending.Refused == "" {
				pending.Body = line
			}
			docs = append(docs, pending)
			pendingLine = 0
			return nil
		}
		// Shippers repeat one action line for a whole batch: parse each
		// distinct line once.
		var d Doc
		if prevAction != nil && bytes.Equal(line, prevAction) {
			d = prevDoc
		} else {
			var err error
			if d, err = parseAction(line, def); err != nil {
				return badRequest("illegal_argument_exception", "line %d: %s", n, err)
			}
			prevAction, prevDoc = line, d
		}
		if d.Op == OpDelete { // the one action without a document line
			docs = append(docs, d)
			return nil
		}
		pending, pendingLine = d, n
		return nil
	})
	if err != nil {
		return nil, err
	}
	if pendingLine > 0 {
		return nil, badRequest("illegal_argument_exception", "line %d: the %s action has no document line after it", pendingLine, pending.Op)
	}
	if len(docs) == 0 {
		return nil, badRequest("action_request_validation_exception", "Validation Failed: 1: no requests added;")
	}
	return docs, nil
}

// parseAction parses one action line: {"index":{...}} or {"create":{...}}.
func parseAction(line []byte, def BulkDefaults) (Doc, error) {
	var action map[string]json.RawMessage
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &action) != nil {
		return Doc{}, fmt.Errorf("the action line is not a JSON object")
	}
	if len(action) != 1 {
		return Doc{}, fmt.Errorf("an action line must name exactly one action, got %d", len(action))
	}
	var d Doc
	var raw json.RawMessage
	for op, v := range action {
		d.Op, raw = op, v
	}
	switch d.Op {
	case OpIndex, OpCreate:
	case OpUpdate, OpDelete:
		d.Refused = "sluice buffers index and create actions only; this " + d.Op + " action was not stored"
	default:
		return Doc{}, fmt.Errorf("unknown action [%.40s]", strconv.Quote(d.Op))
	}
	var meta map[string]json.RawMessage
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &meta) != nil {
		return Doc{}, fmt.Errorf("the %s action's metadata is not a JSON object", d.Op)
	}
	if id, ok := meta["_id"]; ok && string(id) != "null" { // Logstash writes "_id":null
		if !validID(id) {
			return Doc{}, fmt.Errorf("the %s action's _id must be a non-empty string", d.Op)
		}
		d.ID = id
	}
	delete(meta, "_id")
	// Mapping types are gone from Elasticsearch 8, which refuses them; rsyslog
	// sends "_type":"events" unless told the version. Dropped, so that what
	// is stored can go to any Elasticsearch from 7 on.
	delete(meta, "_type")
	if ix, ok := meta["_index"]; ok {
		if json.Unmarshal(ix, &d.Index) != nil || d.Index == "" {
			return Doc{}, fmt.Errorf("the %s action's _index must be a non-empty string", d.Op)
		}
	} else if def.Index != "" {
		d.Index = def.Index
		ixJSON, _ := json.Marshal(def.Index)
		meta["_index"] = ixJSON
	} else {
		return Doc{}, fmt.Errorf("the %s action names no _index and the URL names none", d.Op)
	}
	if d.Refused != "" {
		return d, nil // answered, not stored: no metadata to keep
	}
	for _, kv := range [...][2]string{{"pipeline", def.Pipeline}, {"routing", def.Routing}} {
		if _, set := meta[kv[0]]; !set && kv[1] != "" {
			meta[kv[0]], _ = json.Marshal(kv[1])
		}
	}
	d.Meta, _ = json.Marshal(meta) // keys sorted: the same action is stored the same way
	return d, nil
}

// validID reports whether raw is a non-empty JSON string.
func validID(raw []byte) bool {
	var s string
	return json.Unmarshal(raw, &s) == nil && s != ""
}

// ItemReply is one item of a bulk reply to a shipper.
type ItemReply struct {
	Op     string // OpIndex or OpCreate
	Index  string
	ID     []byte // raw JSON string: the document's own _id or the message id
	Status int    // 201 when stored
	Type   string // error type when Status is not 2xx
	Reason string
}

// AppendBulkReply appends the JSON body of a _bulk reply to dst:
// {"took":ms,"errors":bool,"items":[{"<op>":{...,"status":N}},...]}, one
// item per document in request order, as Elasticsearch answers.
func AppendBulkReply(dst []byte, took time.Duration, items []ItemReply) []byte {
	errs := false
	for i := range items {
		if items[i].Status < 200 || items[i].Status > 299 {
			errs = true
			break
		}
	}
	dst = append(dst, `{"took":`...)
	dst = strconv.AppendInt(dst, took.Milliseconds(), 10)
	dst = append(dst, `,"errors":`...)
	dst = strconv.AppendBool(dst, errs)
	dst = append(dst, `,"items":[`...)
	var index string // the last index quoted, and where it is in dst
	var indexAt, indexEnd int
	for i := range items {
		it := &items[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"`...)
		dst = append(dst, it.Op...)
		dst = append(dst, `":{"_index":`...)
		if i > 0 && it.Index == index { // one index for a whole batch, usually
			dst = append(dst, dst[indexAt:indexEnd]...)
		} else {
			indexAt = len(dst)
			dst = appendJSONString(dst, it.Index)
			index, indexEnd = it.Index, len(dst)
		}
		dst = append(dst, `,"_id":`...)
		dst = append(dst, it.ID...)
		if it.Status >= 200 && it.Status <= 299 {
			dst = append(dst, `,"_version":1,"result":"created","_shards":{"total":1,"successful":1,"failed":0},"_seq_no":`...)
			dst = strconv.AppendInt(dst, int64(i), 10)
			dst = append(dst, `,"_primary_term":1`...)
		} else {
			dst = append(dst, `,"error":{"type":`...)
			dst = appendJSONString(dst, it.Type)
			dst = append(dst, `,"reason":`...)
			dst = appendJSONString(dst, it.Reason)
			dst = append(dst, '}')
		}
		dst = append(dst, `,"status":`...)
		dst = strconv.AppendInt(dst, int64(it.Status), 10)
		dst = append(dst, "}}"...)
	}
	return append(dst, "]}\n"...)
}

func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}

// ElasticsearchError returns the body of an Elasticsearch error reply:
// {"error":{"root_cause":[{"type","reason"}],"type","reason"},"status":N}.
func ElasticsearchError(e *Error) []byte {
	type cause struct {
		Type   string `json:"type"`
		Reason string `json:"reason"`
	}
	type detail struct {
		RootCause []cause `json:"root_cause"`
		cause
	}
	b, _ := json.Marshal(struct {
		Error  detail `json:"error"`
		Status int    `json:"status"`
	}{detail{[]cause{{e.Type, e.Reason}}, cause{e.Type, e.Reason}}, e.Status})
	return append(b, '\n')
}

// ElasticsearchVersion is the version sluice reports on GET /. Elasticsearch
// outputs refuse a server older than they are (Filebeat 8 wants 8 or later)
// and pick their wire format by it (no _type from 8 on).
const ElasticsearchVersion = "8.17.0"

// ProductHeader is the header Elasticsearch clients (8.x) require on every
// reply; its value is ProductValue.
const (
	ProductHeader = "X-Elastic-Product"
	ProductValue  = "Elasticsearch"
)

// BulkIndex reports whether a request path is a _bulk call, and the index it
// names: "/_bulk" -> ("", true), "/logs/_bulk" -> ("logs", true).
func BulkIndex(path string) (string, bool) {
	p := strings.TrimSuffix(path, "/")
	if p == "/_bulk" {
		return "", true
	}
	rest, ok := strings.CutSuffix(p, "/_bulk")
	if !ok {
		return "", false
	}
	ix := strings.TrimPrefix(rest, "/")
	if ix == "" || strings.Contains(ix, "/") || strings.HasPrefix(ix, "_") {
		return "", false
	}
	return ix, true
}

// Probe answers the calls an Elasticsearch output makes besides _bulk: the
// version probe (GET or HEAD /), cluster health, and the template, ILM,
// pipeline and license calls made at start, none of which is stored. path
// is relative to the route's prefix. ok is false for a call sluice does not
// answer (a single-document write such as POST /logs/_doc): the caller
// refuses it with the *Error in status and body.
func Probe(method, path string) (status int, body []byte, ok bool) {
	p := strings.TrimSuffix(path, "/")
	first := strings.TrimPrefix(p, "/")
	if i := strings.IndexByte(first, '/'); i >= 0 {
		first = first[:i]
	}
	read := method == "GET" || method == "HEAD"
	switch {
	case p == "" && read:
		return 200, []byte(infoBody), true
	case first == "_cluster" && read:
		return 200, []byte(healthBody), true
	case p == "/_cat/health" && read:
		return 200, []byte("green\n"), true
	case first == "_cat" && read:
		return 200, nil, true // nothing to list
	case first == "_license" && read:
		return 200, []byte(licenseBody), true
	case first == "_xpack" && read:
		return 200, []byte(`{"build":{},"license":{"status":"active","type":"basic","mode":"basic"},"features":{}}` + "\n"), true
	case first == "_nodes" && read:
		return 200, []byte(`{"_nodes":{"total":1,"successful":1,"failed":0},"cluster_name":"sluice","nodes":{}}` + "\n"), true
	case adminPath[first]:
		// Template, ILM, pipeline, data stream and alias calls: a HEAD or
		// GET says it exists (so the shipper does not install it), a write
		// is acknowledged. Nothing is stored.
		if method == "HEAD" {
			return 200, nil, true
		}
		if read {
			return 200, []byte("{}\n"), true
		}
		return 200, []byte(`{"acknowledged":true}` + "\n"), true
	case !strings.HasPrefix(first, "_") && !strings.Contains(strings.TrimPrefix(p, "/"), "/"):
		// /{index}: HEAD/GET (exists?) and PUT (create the index).
		switch method {
		case "HEAD":
			return 200, nil, true
		case "GET":
			return 200, []byte("{}\n"), true
		case "PUT":
			return 200, []byte(`{"acknowledged":true,"shards_acknowledged":true,"index":` + string(appendJSONString(nil, first)) + "}\n"), true
		}
	}
	e := &Error{Status: 400, Type: "illegal_argument_exception",
		Reason: fmt.Sprintf("sluice stores documents sent to _bulk only; %s on this path is not supported", method)}
	return e.Status, ElasticsearchError(e), false
}

var adminPath = map[string]bool{
	"_index_template": true, "_template": true, "_component_template": true,
	"_ilm": true, "_ingest": true, "_data_stream": true, "_alias": true, "_aliases": true,
	"_security": true,
}

const infoBody = `{"name":"sluice","cluster_name":"sluice","cluster_uuid":"c2x1aWNlLWJ1ZmZlcg","version":{"number":"` + ElasticsearchVersion +
	`","build_flavor":"default","build_type":"docker","build_hash":"sluice","build_date":"2024-12-11T12:08:05.663969764Z","build_snapshot":false,` +
	`"lucene_version":"9.12.0","minimum_wire_compatibility_version":"7.17.0","minimum_index_compatibility_version":"7.0.0"},"tagline":"You Know, for Search"}` + "\n"

const healthBody = `{"cluster_name":"sluice","status":"green","timed_out":false,"number_of_nodes":1,"number_of_data_nodes":1,` +
	`"active_primary_shards":0,"active_shards":0,"relocating_shards":0,"initializing_shards":0,"unassigned_shards":0,` +
	`"delayed_unassigned_shards":0,"number_of_pending_tasks":0,"number_of_in_flight_fetch":0,"task_max_waiting_in_queue_millis":0,"active_shards_percent_as_number":100.0}` + "\n"

const licenseBody = `{"license":{"status":"active","uid":"sluice","type":"basic","issue_date":"2024-01-01T00:00:00.000Z","issue_date_in_millis":1704067200000,` +
	`"max_nodes":1000,"max_resource_units":null,"issued_to":"sluice","issuer":"elasticsearch","start_date_in_millis":-1}}` + "\n"

// AppendAction appends the action line of one stored document to dst,
// newline included: {"<op>":{"_id":<id>,<meta>}}. op and meta come from the
// document's HeaderOp and HeaderMeta (meta may be empty: {} is used); ownID
// is its HeaderID, or empty, in which case fallbackID (the message id, a
// plain string) is the _id, so that a batch delivered twice writes each
// document once.
func AppendAction(dst []byte, op string, meta, ownID []byte, fallbackID string) []byte {
	if op == "" {
		op = OpCreate
	}
	dst = append(dst, `{"`...)
	dst = append(dst, op...)
	dst = append(dst, `":{"_id":`...)
	if len(ownID) > 0 {
		dst = append(dst, ownID...)
	} else {
		dst = appendJSONString(dst, fallbackID)
	}
	if inner := bytes.TrimSpace(meta); len(inner) > 2 {
		dst = append(dst, ',')
		dst = append(dst, inner[1:len(inner)-1]...)
	}
	return append(dst, "}}\n"...)
}

// ItemResult is the store's answer for one item of a bulk request.
type ItemResult struct {
	Status int
	Type   string // the error's type, if any
	Reason string // the error's reason, if any (cut to 300 bytes)
}

// ParseBulkReply reads an Elasticsearch _bulk reply to a request of n
// items. allOK is true when the store says errors:false; items is then nil.
// Otherwise items holds one result per item, in order. A body that is not a
// bulk reply, or whose items are not n, is an error: the caller must not take
// it for a success.
func ParseBulkReply(body []byte, n int) (items []ItemResult, allOK bool, err error) {
	var r struct {
		Errors *bool `json:"errors"`
		Items  []map[string]struct {
			Status int             `json:"status"`
			Error  json.RawMessage `json:"error"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, false, fmt.Errorf("the bulk reply is not JSON: %v", err)
	}
	if r.Errors == nil {
		return nil, false, fmt.Errorf("the bulk reply has no errors field")
	}
	if !*r.Errors && (r.Items == nil || len(r.Items) == n) {
		return nil, true, nil
	}
	if len(r.Items) != n {
		return nil, false, fmt.Errorf("the bulk reply has %d items for %d documents", len(r.Items), n)
	}
	items = make([]ItemResult, n)
	for i, m := range r.Items {
		if len(m) != 1 {
			return nil, false, fmt.Errorf("bulk reply item %d names %d operations, want 1", i, len(m))
		}
		for _, it := range m {
			items[i].Status = it.Status
			items[i].Type, items[i].Reason = itemError(it.Error)
		}
		if items[i].Status == 0 {
			return nil, false, fmt.Errorf("bulk reply item %d has no status", i)
		}
	}
	return items, false, nil
}

// itemError reads an item's error: an object {"type","reason"} or a string.
func itemError(raw json.RawMessage) (typ, reason string) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", ""
	}
	var e struct {
		Type   string `json:"type"`
		Reason string `json:"reason"`
	}
	if json.Unmarshal(raw, &e) != nil {
		_ = json.Unmarshal(raw, &e.Reason)
	}
	if len(e.Reason) > 300 {
		e.Reason = strings.ToValidUTF8(e.Reason[:300], "") + "..."
	}
	if len(e.Type) > 100 {
		e.Type = strings.ToValidUTF8(e.Type[:100], "")
	}
	return e.Type, e.Reason
}
