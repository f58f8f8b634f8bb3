package proxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

const esPolicy = `
routes:
  - name: otlp
    match: { path: /v1/ }
    protocol: otlp
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: loki
    match: { path: /loki }
    protocol: loki
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: hec
    match: { path: /services/collector }
    protocol: splunk-hec
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: lines
    match: { path: /lines }
    protocol: ndjson
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: logs
    match: { path: / }
    protocol: elasticsearch
    max_body: 64KiB
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`

// logsEnv is a server of esPolicy and the store its queues are in.
type logsEnv struct {
	*Server
	st *buffer.Store
}

// logsServer serves esPolicy over a store opened with cfg (in a temporary
// directory unless Dir is set).
func logsServer(t *testing.T, cfg buffer.Config) (string, *logsEnv) {
	t.Helper()
	s, st := newTestServer(t, esPolicy, cfg, nil)
	return "http://" + listen(t, s), &logsEnv{s, st}
}

// stored returns every message of the route's queue, in order.
func stored(t *testing.T, s *logsEnv, route string) []*store.Delivery {
	t.Helper()
	q, err := s.st.Queue(route, []string{"store"})
	must(t, err)
	c, err := q.Consumer("store")
	must(t, err)
	var all []*store.Delivery
	for range 100 {
		got, err := c.Fetch(1000, time.Now())
		must(t, err)
		if len(got) == 0 {
			break
		}
		all = append(all, got...)
	}
	return all
}

func header(d *store.Delivery, name string) string {
	for _, h := range d.Header {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

type bulkReply struct {
	Took   *int  `json:"took"`
	Errors *bool `json:"errors"`
	Items  []map[string]struct {
		Index  string `json:"_index"`
		ID     string `json:"_id"`
		Status int    `json:"status"`
		Error  *struct{ Type, Reason string }
	} `json:"items"`
}

// The _bulk of rsyslog (and the other shippers' shapes) is stored one
// message per document, with its action, and answered with a bulk reply
// whose items carry the ids delivery will use as _id.
func TestElasticsearchBulkSplits(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	body := "{\"index\":{\"_index\":\"system\"}}\n{\"msg\":\"1\"}\n{\"create\":{\"_id\":\"own\"}}\n{\"msg\":\"2\"}\n{\"create\":{}}\n{\"msg\":\"3\"}\n"
	resp := do(t, "POST", base+"/app/_bulk", body, map[string]string{"Content-Type": "application/x-ndjson"})
	if resp.StatusCode() != 200 || string(resp.Header.Peek(logproto.ProductHeader)) != "Elasticsearch" {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	var r bulkReply
	must(t, json.Unmarshal(resp.Body(), &r))
	if r.Took == nil || r.Errors == nil || *r.Errors || len(r.Items) != 3 {
		t.Fatalf("reply %s", resp.Body())
	}
	msgs := stored(t, s, "logs")
	if len(msgs) != 3 {
		t.Fatalf("%d messages stored, want 3", len(msgs))
	}
	// The documents of one request are appended at once: stored in any
	// order among themselves.
	sort.Slice(msgs, func(i, j int) bool { return string(msgs[i].Body) < string(msgs[j].Body) })
	wantIndex := []string{"system", "app", "app"}
	for i, m := range msgs {
		item := r.Items[i][[]string{"index", "create", "create"}[i]]
		if item.Status != 201 || item.Index != wantIndex[i] {
			t.Errorf("item %d: %+v", i, item)
		}
		if want := fmt.Sprintf(`{"msg":"%d"}`, i+1); string(m.Body) != want {
			t.Errorf("message %d body %s", i, m.Body)
		}
		if i != 1 && item.ID != m.ID.String() {
			t.Errorf("item %d _id %q, message id %s", i, item.ID, m.ID)
		}
		if header(m, logproto.HeaderMeta) != `{"_index":"`+wantIndex[i]+`"}` {
			t.Errorf("message %d meta %q", i, header(m, logproto.HeaderMeta))
		}
	}
	if r.Items[1]["create"].ID != "own" || header(msgs[1], logproto.HeaderID) != `"own"` {
		t.Errorf("own _id lost: %+v %q", r.Items[1], header(msgs[1], logproto.HeaderID))
	}
}

// update and delete are answered as failed items (400
// illegal_argument_exception, errors:true) and not stored; the other items
// of the request are stored and answered 201. A request of deletes only
// stores nothing and is answered 200 with every item failed, as
// Elasticsearch would for items it refuses.
func TestElasticsearchUpdateDeleteRefusedPerItem(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	body := "{\"index\":{}}\n{\"msg\":\"1\"}\n{\"delete\":{\"_id\":\"d1\"}}\n" +
		"{\"update\":{\"_id\":\"u1\"}}\n{\"doc\":{\"msg\":\"x\"}}\n{\"create\":{}}\n{\"msg\":\"2\"}\n"
	resp := do(t, "POST", base+"/app/_bulk", body, nil)
	if resp.StatusCode() != 200 {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	var r bulkReply
	must(t, json.Unmarshal(resp.Body(), &r))
	if r.Errors == nil || !*r.Errors || len(r.Items) != 4 {
		t.Fatalf("reply %s", resp.Body())
	}
	for i, w := range []struct {
		op, id string
		status int
	}{{"index", "", 201}, {"delete", "d1", 400}, {"update", "u1", 400}, {"create", "", 201}} {
		it, ok := r.Items[i][w.op]
		if !ok || it.Status != w.status || (w.id != "" && it.ID != w.id) {
			t.Errorf("item %d: %+v, want %s %d", i, r.Items[i], w.op, w.status)
		}
		if w.status == 400 && (it.Error == nil || it.Error.Type != logproto.RefusedType) {
			t.Errorf("item %d: error %+v", i, it.Error)
		}
	}
	resp = do(t, "POST", base+"/app/_bulk", "{\"delete\":{\"_id\":\"d2\"}}\n", nil)
	must(t, json.Unmarshal(resp.Body(), &r))
	if resp.StatusCode() != 200 || len(r.Items) != 1 || r.Items[0]["delete"].Status != 400 {
		t.Fatalf("deletes only: %d %s", resp.StatusCode(), resp.Body())
	}
	msgs := stored(t, s, "logs")
	if len(msgs) != 2 {
		t.Fatalf("%d messages stored, want 2 (the index and the create)", len(msgs))
	}
	for _, m := range msgs {
		if op := header(m, logproto.HeaderOp); op != "index" && op != "create" {
			t.Errorf("stored op %q", op)
		}
	}
}

// A malformed document anywhere refuses the whole request with an
// Elasticsearch 400 that echoes none of it; nothing is stored.
func TestElasticsearchMalformedStoresNothing(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	body := "{\"index\":{\"_index\":\"a\"}}\n{\"msg\":\"1\"}\n{\"index\":{\"_index\":\"a\"}}\n{secret-not-json\n"
	resp := do(t, "POST", base+"/_bulk", body, nil)
	if resp.StatusCode() != 400 || bytes.Contains(resp.Body(), []byte("secret")) || !bytes.Contains(resp.Body(), []byte(`"root_cause"`)) {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	if n := len(stored(t, s, "logs")); n != 0 {
		t.Fatalf("%d messages stored from a refused request", n)
	}
}

// The calls Elasticsearch outputs make at start are answered, not stored.
func TestElasticsearchProbes(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	for _, c := range []struct{ method, path, has string }{
		{"GET", "/", `"number":"8.`},
		{"HEAD", "/", ""},
		{"GET", "/_cluster/health", `"green"`},
		{"HEAD", "/_cat/health", ""},
		{"GET", "/_license", `"active"`},
		{"PUT", "/_index_template/filebeat", `"acknowledged":true`},
		{"GET", "/_ilm/policy/filebeat", `{}`},
	} {
		resp := do(t, c.method, base+c.path, "", nil)
		if resp.StatusCode() != 200 || !bytes.Contains(resp.Body(), []byte(c.has)) || string(resp.Header.Peek(logproto.ProductHeader)) != "Elasticsearch" {
			t.Errorf("%s %s: %d %s", c.method, c.path, resp.StatusCode(), resp.Body())
		}
	}
	resp := do(t, "POST", base+"/logs/_doc", `{"m":1}`, nil)
	if resp.StatusCode() != 400 {
		t.Errorf("POST _doc: %d %s", resp.StatusCode(), resp.Body())
	}
	if n := len(stored(t, s, "logs")); n != 0 {
		t.Fatalf("%d messages stored by probes", n)
	}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// A gzip body is decoded; one that decodes past max_body (a zip bomb) is
// 413 and stores nothing.
func TestElasticsearchGzip(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	body := "{\"create\":{\"_index\":\"a\"}}\n{\"msg\":\"\\n\\u0000\"}\n"
	resp := do(t, "POST", base+"/_bulk", string(gz([]byte(body))), map[string]string{"Content-Encoding": "gzip"})
	if resp.StatusCode() != 200 {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	bomb := strings.Repeat("{\"create\":{\"_index\":\"a\"}}\n{\"m\":1}\n", 10000) // 340 KB > 64KiB
	resp = do(t, "POST", base+"/_bulk", string(gz([]byte(bomb))), map[string]string{"Content-Encoding": "gzip"})
	if resp.StatusCode() != 413 || !bytes.Contains(resp.Body(), []byte("max_body")) {
		t.Fatalf("bomb: %d %s", resp.StatusCode(), resp.Body())
	}
	msgs := stored(t, s, "logs")
	if len(msgs) != 1 || string(msgs[0].Body) != `{"msg":"\n\u0000"}` {
		t.Fatalf("stored %d", len(msgs))
	}
}

// Storage full: Elasticsearch's own back-pressure answer (429 with
// Retry-After), nothing acknowledged.
func TestElasticsearchFull(t *testing.T) {
	// Each of esPolicy's 5 routes starts with a 64 KiB segment: room for
	// about 6 requests of 11 KB after that.
	base, s := logsServer(t, buffer.Config{MaxBytes: (5*64 + 64) << 10, SegmentBytes: 64 << 10})
	s.fullWait = 300 * time.Millisecond // nothing frees room here: a short wait, then the refusal
	doc := `{"msg":"` + strings.Repeat("x", 500) + `"}`
	body := strings.Repeat("{\"create\":{\"_index\":\"a\"}}\n"+doc+"\n", 20)
	acked, refused := 0, 0
	for range 30 {
		resp := do(t, "POST", base+"/_bulk", body, nil)
		switch resp.StatusCode() {
		case 200:
			var r bulkReply
			must(t, json.Unmarshal(resp.Body(), &r))
			for _, it := range r.Items {
				if it["create"].Status == 201 {
					acked++
				}
			}
		case 429:
			refused++
			if len(resp.Header.Peek("Retry-After")) == 0 || !bytes.Contains(resp.Body(), []byte("es_rejected_execution_exception")) {
				t.Fatalf("429 without Retry-After or type: %s", resp.Body())
			}
		default:
			t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
		}
	}
	if n := len(stored(t, s, "logs")); n < acked || acked == 0 || refused == 0 {
		t.Fatalf("acknowledged %d, stored %d, %d requests refused", acked, n, refused)
	}
}

func TestNDJSONRoute(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	resp := do(t, "POST", base+"/lines", "{\"a\":1}\n{\"a\":2}\r\n\n[3]\n", nil)
	if resp.StatusCode() != 200 || !bytes.Contains(resp.Body(), []byte(`"documents":3`)) {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "POST", base+"/lines", "{\"a\":1}\nsecret\n", nil)
	if resp.StatusCode() != 422 || bytes.Contains(resp.Body(), []byte("secret")) || !bytes.Contains(resp.Body(), []byte("line 2")) {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	msgs := stored(t, s, "lines")
	if len(msgs) != 3 {
		t.Fatalf("stored %d", len(msgs))
	}
}

// Splunk HEC: events stored one message each and answered HEC's success
// once durable; a bad event refuses the whole request with HEC's code and
// the event's number; the health call is answered, not stored.
func TestSplunkHECRoute(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	auth := map[string]string{"Authorization": "Splunk 00000000-0000-0000-0000-000000000000"}
	resp := do(t, "POST", base+"/services/collector/event", `{"event":"a","time":1}{"event":{"b":2}}`+"\n"+`{"event":"c","host":"h"}`, auth)
	if resp.StatusCode() != 200 || string(resp.Body()) != "{\"text\":\"Success\",\"code\":0}\n" {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "POST", base+"/services/collector/raw?sourcetype=app", "line one\nline two\n", auth)
	if resp.StatusCode() != 200 {
		t.Fatalf("raw: %d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "POST", base+"/services/collector", `{"event":"ok"}{"time":2}`, auth)
	if resp.StatusCode() != 400 || !bytes.Contains(resp.Body(), []byte(`"code":12,"invalid-event-number":1`)) {
		t.Fatalf("bad event: %d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "GET", base+"/services/collector/health", "", nil)
	if resp.StatusCode() != 200 || !bytes.Contains(resp.Body(), []byte(`"code":17`)) {
		t.Fatalf("health: %d %s", resp.StatusCode(), resp.Body())
	}
	msgs := stored(t, s, "hec")
	if len(msgs) != 5 {
		t.Fatalf("%d messages stored, want 5", len(msgs))
	}
	bodies := map[string]bool{}
	for _, m := range msgs {
		bodies[string(m.Body)] = true
		if header(m, "Authorization") != "" {
			t.Errorf("the token was stored")
		}
	}
	for _, want := range []string{`{"event":"a","time":1}`, `{"event":{"b":2}}`, `{"event":"c","host":"h"}`, `{"sourcetype":"app","event":"line one"}`} {
		if !bodies[want] {
			t.Errorf("missing %s in %v", want, bodies)
		}
	}
}

// Loki: a JSON push and a snappy protobuf push (Promtail's) are stored one
// message per entry with their labels and answered 204; a stream without
// labels refuses the push, nothing stored.
func TestLokiRoute(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	resp := do(t, "POST", base+"/loki/api/v1/push", `{"streams":[{"stream":{"job":"a"},"values":[["1710000000000000000","one"],["1710000000000000001","two"]]}]}`,
		map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode() != 204 {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	pb := promtailPush(t)
	resp = do(t, "POST", base+"/loki/api/v1/push", string(pb), map[string]string{"Content-Type": "application/x-protobuf"})
	if resp.StatusCode() != 204 {
		t.Fatalf("protobuf: %d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "POST", base+"/loki/api/v1/push", `{"streams":[{"stream":{"job":"a"},"values":[["1","ok"]]},{"stream":{},"values":[["1","x"]]}]}`, map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode() != 400 || !bytes.Contains(resp.Body(), []byte("streams[1]: at least one label pair")) {
		t.Fatalf("bad: %d %s", resp.StatusCode(), resp.Body())
	}
	if resp := do(t, "GET", base+"/loki/ready", "", nil); resp.StatusCode() != 200 {
		t.Errorf("ready: %d", resp.StatusCode())
	}
	msgs := stored(t, s, "loki")
	if len(msgs) != 3 {
		t.Fatalf("%d stored, want 3", len(msgs))
	}
	lines := map[string]string{}
	for _, m := range msgs {
		var e logproto.LokiEntry
		must(t, json.Unmarshal(m.Body, &e))
		lines[e.Line] = e.Labels["job"]
	}
	if lines["one"] != "a" || lines["two"] != "a" || lines["from promtail"] != "promtail" {
		t.Errorf("stored %v", lines)
	}
}

// promtailPush is a snappy PushRequest of one entry, as Promtail sends.
func promtailPush(t *testing.T) []byte {
	var ts, e, st, req []byte
	ts = protowire.AppendTag(ts, 1, protowire.VarintType)
	ts = protowire.AppendVarint(ts, 1710000000)
	e = protowire.AppendTag(e, 1, protowire.BytesType)
	e = protowire.AppendBytes(e, ts)
	e = protowire.AppendTag(e, 2, protowire.BytesType)
	e = protowire.AppendString(e, "from promtail")
	st = protowire.AppendTag(st, 1, protowire.BytesType)
	st = protowire.AppendString(st, `{job="promtail"}`)
	st = protowire.AppendTag(st, 2, protowire.BytesType)
	st = protowire.AppendBytes(st, e)
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, st)
	return snappy.Encode(nil, req)
}

// OTLP/HTTP logs: a protobuf export and a JSON export are stored one
// message per record and answered 200 with an empty response in the
// request's encoding; a malformed export gets 400 with a google.rpc.Status.
func TestOTLPRoute(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	rec := func(body string) []byte {
		var any, r []byte
		any = protowire.AppendTag(any, 1, protowire.BytesType)
		any = protowire.AppendString(any, body)
		r = protowire.AppendTag(r, 5, protowire.BytesType)
		return protowire.AppendBytes(r, any)
	}
	var sl, rl, req []byte
	for _, b := range []string{"one", "two"} {
		sl = protowire.AppendTag(sl, 2, protowire.BytesType)
		sl = protowire.AppendBytes(sl, rec(b))
	}
	rl = protowire.AppendTag(rl, 2, protowire.BytesType)
	rl = protowire.AppendBytes(rl, sl)
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, rl)
	resp := do(t, "POST", base+"/v1/logs", string(gz(req)), map[string]string{"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
	if resp.StatusCode() != 200 || len(resp.Body()) != 0 || string(resp.Header.ContentType()) != "application/x-protobuf" {
		t.Fatalf("protobuf: %d %q %s", resp.StatusCode(), resp.Body(), resp.Header.ContentType())
	}
	resp = do(t, "POST", base+"/v1/logs", `{"resourceLogs":[{"resource":{},"scopeLogs":[{"scope":{"name":"s"},"logRecords":[{"body":{"stringValue":"three"}}]}]}]}`,
		map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode() != 200 || string(resp.Body()) != "{}" {
		t.Fatalf("json: %d %s", resp.StatusCode(), resp.Body())
	}
	resp = do(t, "POST", base+"/v1/logs", `{"resourceLogs":[{"scopeLogs":[{"logRecords":["x"]}]}]}`, map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode() != 400 || !bytes.Contains(resp.Body(), []byte(`"code":3`)) {
		t.Fatalf("bad: %d %s", resp.StatusCode(), resp.Body())
	}
	if resp := do(t, "POST", base+"/v1/traces", "{}", map[string]string{"Content-Type": "application/json"}); resp.StatusCode() != 404 {
		t.Errorf("traces: %d", resp.StatusCode())
	}
	msgs := stored(t, s, "otlp")
	if len(msgs) != 3 {
		t.Fatalf("%d stored, want 3", len(msgs))
	}
	types := map[string]int{}
	for _, m := range msgs {
		types[header(m, "Content-Type")]++
	}
	if types["application/x-protobuf"] != 2 || types["application/json"] != 1 {
		t.Errorf("content types %v", types)
	}
}

// A body over max_body (64 KiB here) is refused before it is read, in the
// route's protocol's shape: an Elasticsearch error for an elasticsearch
// route.
func TestLogTooLargeInProtocolShape(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	body := strings.Repeat("{\"create\":{\"_index\":\"a\"}}\n{\"m\":1}\n", 3000)
	resp := do(t, "POST", base+"/_bulk", body, nil)
	if resp.StatusCode() != 413 || !bytes.Contains(resp.Body(), []byte(`"type":"content_too_long_exception"`)) || !bytes.Contains(resp.Body(), []byte(`"status":413`)) {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	if n := len(stored(t, s, "logs")); n != 0 {
		t.Fatalf("%d stored", n)
	}
}

// A body of many tiny documents is stored whole with at most
// logAppendSlots appends under way at once (not one goroutine per document
// at once: 20,000 here, a million in a 20 MiB body).
func TestManyTinyDocuments(t *testing.T) {
	base, s := logsServer(t, buffer.Config{})
	var b strings.Builder
	const n = 20000
	for range n {
		b.WriteString("{}\n")
	}
	before := runtime.NumGoroutine()
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if g := int64(runtime.NumGoroutine()); g > peak.Load() {
				peak.Store(g)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	resp := do(t, "POST", base+"/lines", b.String(), nil)
	close(done)
	if resp.StatusCode() != 200 || !bytes.Contains(resp.Body(), []byte(`"documents":20000`)) {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	if p := peak.Load() - int64(before); p > int64(cap(logAppendSlots))+100 {
		t.Errorf("%d goroutines at once for %d documents; the bound is %d", p, n, cap(logAppendSlots))
	}
	if got := len(stored(t, s, "lines")); got != n {
		t.Errorf("%d stored, want %d", got, n)
	}
}

// A request waiting for room does not hold a graceful stop: Shutdown ends
// the wait with the protocol's refusal.
func TestShutdownEndsFullWait(t *testing.T) {
	base, s := logsServer(t, buffer.Config{MaxBytes: 1, SegmentBytes: 64 << 10}) // full from the start
	s.fullWait = time.Minute
	got := make(chan int, 1)
	go func() {
		got <- do(t, "POST", base+"/_bulk", "{\"create\":{\"_index\":\"a\"}}\n{\"m\":1}\n", nil).StatusCode()
	}()
	time.Sleep(500 * time.Millisecond) // the request is waiting for room
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	must(t, s.Shutdown(ctx))
	select {
	case code := <-got:
		if code != 429 {
			t.Errorf("status %d, want 429", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request was not answered")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v: it waited for the request's wait", d)
	}
}

// max_wait on a log route: a request whose documents would wait past it
// (the target paused all day) is refused in the protocol's own
// back-pressure shape, with Retry-After, and nothing is stored; probes are
// still answered.
func TestLogMaxWait(t *testing.T) {
	route := func(name, path, protocol string) string {
		return fmt.Sprintf(`
  - name: %s
    match: { path: %s }
    protocol: %s
    max_wait: 1h
    targets:
      - name: paused
        url: "http://127.0.0.1:1"
        windows: [{ between: "00:00-12:00", rate: 0 }, { between: "12:00-00:00", rate: 0 }]`, name, path, protocol)
	}
	base, s := policyServer(t, "routes:"+route("lines", "/lines", "ndjson")+route("hec", "/services/collector", "splunk-hec")+
		route("loki", "/loki", "loki")+route("otlp", "/v1/", "otlp")+route("es", "/", "elasticsearch"))
	cases := []struct {
		route, path, body, ctype string
		status                   int
		shape                    string
	}{
		{"es", "/_bulk", "{\"index\":{\"_index\":\"a\"}}\n{\"m\":1}\n", "application/x-ndjson", 429, `"es_rejected_execution_exception"`},
		{"lines", "/lines", "{\"m\":1}\n", "application/x-ndjson", 503, `"backlog_too_long"`},
		{"hec", "/services/collector/event", `{"event":"x"}`, "application/json", 503, `"code":9`},
		{"loki", "/loki/api/v1/push", `{"streams":[{"stream":{"a":"b"},"values":[["1","x"]]}]}`, "application/json", 429, "max_wait"},
		{"otlp", "/v1/logs", `{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"x"}}]}]}]}`, "application/json", 503, `"code":14`},
	}
	for _, c := range cases {
		r := do(t, "POST", base+c.path, c.body, map[string]string{"Content-Type": c.ctype})
		if r.StatusCode() != c.status || !strings.Contains(string(r.Body()), c.shape) || len(r.Header.Peek("Retry-After")) == 0 {
			t.Errorf("%s: %d %s (Retry-After %q), want %d with %s", c.route, r.StatusCode(), r.Body(), r.Header.Peek("Retry-After"), c.status, c.shape)
		}
		if n := s.testQueue(c.route).Stats().Appended; n != 0 {
			t.Errorf("%s: %d stored", c.route, n)
		}
	}
	if r := do(t, "GET", base+"/", "", nil); r.StatusCode() != 200 {
		t.Errorf("version probe under max_wait: %d", r.StatusCode())
	}
}

// hec_tokens: no token 401 code 2, another scheme 401 code 3, a wrong one
// 403 code 4 (nothing stored); "Splunk <token>" and Basic with the token as
// password are let in; health needs none.
func TestSplunkHECTokens(t *testing.T) {
	base, s := policyServer(t, `
routes:
  - name: hec
    match: { path: /services/collector }
    protocol: splunk-hec
    hec_tokens: [tok-one, tok-two]
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`)
	ev := `{"event":"x"}`
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x:tok-two"))
	cases := []struct {
		auth   string
		status int
		body   string
	}{
		{"", 401, `{"text":"Token is required","code":2}`},
		{"Bearer tok-one", 401, `{"text":"Invalid authorization","code":3}`},
		{"Splunk tok-three", 403, `{"text":"Invalid token","code":4}`},
		{"Splunk tok-on", 403, `{"text":"Invalid token","code":4}`},
		{"Splunk tok-one", 200, `{"text":"Success","code":0}`},
		{basic, 200, `{"text":"Success","code":0}`},
	}
	for _, c := range cases {
		h := map[string]string{}
		if c.auth != "" {
			h["Authorization"] = c.auth
		}
		r := do(t, "POST", base+"/services/collector/event", ev, h)
		if r.StatusCode() != c.status || strings.TrimSpace(string(r.Body())) != c.body {
			t.Errorf("%q: %d %s, want %d %s", c.auth, r.StatusCode(), r.Body(), c.status, c.body)
		}
	}
	if n := s.testQueue("hec").Stats().Appended; n != 2 {
		t.Errorf("%d stored, want the 2 with a good token", n)
	}
	if r := do(t, "GET", base+"/services/collector/health", "", nil); r.StatusCode() != 200 {
		t.Errorf("health without a token: %d", r.StatusCode())
	}
}

// Indexer acknowledgement: a call on a channel gets ackIds 0, 1, ... per
// channel; the ack call answers true for each id issued on that channel
// and false for others; the ack call needs a channel (code 10).
func TestSplunkHECAcks(t *testing.T) {
	base, _ := policyServer(t, `
routes:
  - name: hec
    match: { path: /services/collector }
    protocol: splunk-hec
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`)
	chA := map[string]string{"X-Splunk-Request-Channel": "11111111-1111-1111-1111-111111111111"}
	for i := range 3 {
		r := do(t, "POST", base+"/services/collector/event", `{"event":"x"}`, chA)
		if want := fmt.Sprintf(`{"text":"Success","code":0,"ackId":%d}`, i); r.StatusCode() != 200 || strings.TrimSpace(string(r.Body())) != want {
			t.Fatalf("call %d: %d %s, want %s", i, r.StatusCode(), r.Body(), want)
		}
	}
	r := do(t, "POST", base+"/services/collector/raw?channel=22222222-2222-2222-2222-222222222222", "a line\n", nil)
	if strings.TrimSpace(string(r.Body())) != `{"text":"Success","code":0,"ackId":0}` {
		t.Errorf("raw on channel B: %s", r.Body())
	}
	r = do(t, "POST", base+"/services/collector/ack", `{"acks":[0,2,3]}`, chA)
	if r.StatusCode() != 200 || strings.TrimSpace(string(r.Body())) != `{"acks":{"0":true,"2":true,"3":false}}` {
		t.Errorf("ack A: %d %s", r.StatusCode(), r.Body())
	}
	r = do(t, "POST", base+"/services/collector/ack?channel=33333333-3333-3333-3333-333333333333", `{"acks":[0]}`, nil)
	if strings.TrimSpace(string(r.Body())) != `{"acks":{"0":false}}` {
		t.Errorf("ack of an unknown channel: %s", r.Body())
	}
	r = do(t, "POST", base+"/services/collector/ack", `{"acks":[0]}`, nil)
	if r.StatusCode() != 400 || !strings.Contains(string(r.Body()), `"code":10`) {
		t.Errorf("ack without a channel: %d %s", r.StatusCode(), r.Body())
	}
	if r = do(t, "POST", base+"/services/collector/event", `{"event":"x"}`, nil); strings.Contains(string(r.Body()), "ackId") {
		t.Errorf("no channel, yet an ackId: %s", r.Body())
	}
}

// A route remembers at most hecMaxChannels channels; the oldest is
// forgotten first (its acks then answer false: the client resends).
func TestHECAcksBounded(t *testing.T) {
	a := newHECAcks()
	for i := range hecMaxChannels + 5 {
		a.issue([]byte(strconv.Itoa(i)))
	}
	if len(a.next) != hecMaxChannels || len(a.order) != hecMaxChannels {
		t.Fatalf("%d channels kept, %d in order; want %d", len(a.next), len(a.order), hecMaxChannels)
	}
	if a.done([]byte("0"), []uint64{0})[0] || !a.done([]byte(strconv.Itoa(hecMaxChannels+4)), []uint64{0})[0] {
		t.Error("the oldest channel is kept or the newest forgotten")
	}
}

// A channel name longer than hecMaxChannelLen is refused (code 11) before
// anything is read or stored, and so is an ack query of more than
// hecMaxAcks ids.
func TestSplunkHECBadChannelAndAcks(t *testing.T) {
	base, s := policyServer(t, `
routes:
  - name: hec
    match: { path: /services/collector }
    protocol: splunk-hec
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`)
	long := map[string]string{"X-Splunk-Request-Channel": strings.Repeat("c", hecMaxChannelLen+1)}
	r := do(t, "POST", base+"/services/collector/event", `{"event":"x"}`, long)
	if r.StatusCode() != 400 || !strings.Contains(string(r.Body()), `"code":11`) {
		t.Errorf("channel of %d bytes: %d %s, want 400 code 11", hecMaxChannelLen+1, r.StatusCode(), r.Body())
	}
	if n := s.testQueue("hec").Stats().Appended; n != 0 {
		t.Errorf("%d stored under a refused channel", n)
	}
	ids := strings.TrimSuffix(strings.Repeat("0,", hecMaxAcks+1), ",")
	ch := map[string]string{"X-Splunk-Request-Channel": "11111111-1111-1111-1111-111111111111"}
	r = do(t, "POST", base+"/services/collector/ack", `{"acks":[`+ids+`]}`, ch)
	if r.StatusCode() != 400 || !strings.Contains(string(r.Body()), fmt.Sprintf("at most %d acks", hecMaxAcks)) {
		t.Errorf("ack query of %d ids: %d %s, want 400", hecMaxAcks+1, r.StatusCode(), r.Body())
	}
}

// What a log route stores with every document (appendSome: the header
// names, the content types, the protocols, the Elasticsearch operations)
// is in the record codec's table, where it takes a byte instead of its
// spelling: with version 1 records these headers were a third of a
// ~370-byte Elasticsearch document's record. The stored messages of each
// protocol carry nothing else but the metadata, the document's own _id and
// the request's URI.
func TestLogHeadersAreRecordSymbols(t *testing.T) {
	for _, s := range []string{"POST", "Content-Type", logproto.HeaderProtocol, logproto.HeaderOp, logproto.HeaderMeta, logproto.HeaderID,
		string(valueJSON), logproto.OTLPJSON, logproto.OTLPProtobuf,
		policies.ProtocolElasticsearch, policies.ProtocolNDJSON, policies.ProtocolSplunkHEC, policies.ProtocolLoki, policies.ProtocolOTLP,
		logproto.OpIndex, logproto.OpCreate} {
		if !store.RecordSymbol(s) {
			t.Errorf("%q is not a record symbol: every document would store it spelled out", s)
		}
	}
	base, s := logsServer(t, buffer.Config{})
	body := "{\"index\":{\"_index\":\"system\"}}\n{\"msg\":\"1\"}\n{\"create\":{\"_id\":\"own\"}}\n{\"msg\":\"2\"}\n"
	if resp := do(t, "POST", base+"/app/_bulk", body, map[string]string{"Content-Type": "application/x-ndjson"}); resp.StatusCode() != 200 {
		t.Fatalf("%d %s", resp.StatusCode(), resp.Body())
	}
	msgs := stored(t, s, "logs")
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	for _, m := range msgs {
		for _, h := range m.Header {
			if !store.RecordSymbol(h.Name) {
				t.Errorf("header %q is stored spelled out with every document", h.Name)
			}
			if !store.RecordSymbol(h.Value) && h.Name != logproto.HeaderMeta && h.Name != logproto.HeaderID {
				t.Errorf("header %s: %q is stored spelled out with every document", h.Name, h.Value)
			}
		}
	}
}

// hec_query_token: a request without Authorization may carry its token as
// ?token=, checked like the header's; Authorization wins when both are
// there; the token is cut from the URI stored with the events. Without the
// option a query token is not read (401), and is cut from a stored URI
// all the same.
func TestSplunkHECQueryToken(t *testing.T) {
	base, s := policyServer(t, `
routes:
  - name: hec
    match: { path: /services/collector }
    protocol: splunk-hec
    hec_tokens: [tok-one]
    hec_query_token: true
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: open
    match: { path: /open }
    protocol: splunk-hec
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: strict
    match: { path: /strict }
    protocol: splunk-hec
    hec_tokens: [tok-one]
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`)
	ev := `{"event":"x"}`
	cases := []struct {
		path, auth string
		status     int
		body       string
	}{
		{"/services/collector/event?token=tok-one", "", 200, `{"text":"Success","code":0}`},
		{"/services/collector/event?channel=c1&token=tok-one&x=1", "", 200, `{"text":"Success","code":0,"ackId":0}`},
		{"/services/collector/event?tok%65n=tok-one", "", 200, `{"text":"Success","code":0}`},
		{"/services/collector/event?token=tok-two", "", 403, `{"text":"Invalid token","code":4}`},
		{"/services/collector/event?token=", "", 401, `{"text":"Token is required","code":2}`},
		{"/services/collector/event?token=tok-two", "Splunk tok-one", 200, `{"text":"Success","code":0}`},
		{"/services/collector/event?token=tok-one", "Splunk tok-two", 403, `{"text":"Invalid token","code":4}`},
		{"/strict/services/collector/event?token=tok-one", "", 401, `{"text":"Token is required","code":2}`},
		{"/open/services/collector/event?token=anything&host=h", "", 200, `{"text":"Success","code":0}`},
	}
	for _, c := range cases {
		h := map[string]string{}
		if c.auth != "" {
			h["Authorization"] = c.auth
		}
		r := do(t, "POST", base+c.path, ev, h)
		if r.StatusCode() != c.status || strings.TrimSpace(string(r.Body())) != c.body {
			t.Errorf("%s %q: %d %s, want %d %s", c.path, c.auth, r.StatusCode(), r.Body(), c.status, c.body)
		}
	}
	for route, want := range map[string][]string{
		"hec":  {"/services/collector/event", "/services/collector/event?channel=c1&x=1", "/services/collector/event", "/services/collector/event"},
		"open": {"/open/services/collector/event?host=h"},
	} {
		var got []string
		c, err := s.testQueue(route).Consumer("store")
		must(t, err)
		ds, err := c.Fetch(100, time.Now())
		must(t, err)
		for _, d := range ds {
			got = append(got, d.URI)
			if strings.Contains(d.URI, "tok") || strings.Contains(d.URI, "anything") {
				t.Errorf("%s: a token is stored: %s", route, d.URI)
			}
		}
		sort.Strings(got)
		sort.Strings(want)
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s stored URIs %q, want %q", route, got, want)
		}
	}
}

func TestWithoutToken(t *testing.T) {
	for in, want := range map[string]string{
		"/a":                          "/a",
		"/a?x=1":                      "/a?x=1",
		"/a?token=t":                  "/a",
		"/a?token":                    "/a",
		"/a?x=1&token=t&y=2":          "/a?x=1&y=2",
		"/a?token=t&token=u&tokens=1": "/a?tokens=1",
		"/a?tok=1&mytoken=2":          "/a?tok=1&mytoken=2",
		"/a?tok%65n=t&x=%41":          "/a?x=%41",
		"/a?x=%zz&tok%6":              "/a?x=%zz&tok%6",
	} {
		if got := string(withoutToken([]byte(in))); got != want {
			t.Errorf("withoutToken(%q) = %q, want %q", in, got, want)
		}
	}
}
