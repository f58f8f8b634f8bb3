package drain

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/policies"
)

// mockES is an Elasticsearch bulk endpoint that keeps documents by _id, as
// the real store does, and answers each item as item(doc, seen) says.
type mockES struct {
	mu       sync.Mutex
	docs     map[string][]byte // by _id
	writes   map[string]int    // 2xx answers per _id
	requests [][]string        // the _ids of each request
	item     func(doc []byte, seen int) (status int, errType string)
	seen     map[string]int
	badReply int // answer this many requests 200 with a body that is no bulk reply
}

func newMockES(item func(doc []byte, seen int) (int, string)) *mockES {
	return &mockES{docs: map[string][]byte{}, writes: map[string]int{}, seen: map[string]int{}, item: item}
}

func (m *mockES) respond(h *hit, ctx *fasthttp.RequestCtx) {
	index, bulk := logproto.BulkIndex(h.uri)
	if index == "" {
		index = "default"
	}
	docs, err := logproto.ParseBulk(h.body, index)
	if err != nil || !bulk {
		ctx.SetStatusCode(400)
		ctx.SetBodyString(fmt.Sprintf(`{"error":%q,"status":400}`, fmt.Sprint(err)))
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.badReply > 0 {
		m.badReply--
		ctx.SetBodyString("<html>proxy error</html>")
		return
	}
	items := make([]logproto.ItemReply, len(docs))
	var ids []string
	for i, d := range docs {
		var id string
		json.Unmarshal(d.ID, &id)
		ids = append(ids, id)
		m.seen[id]++
		status, typ := 201, ""
		if m.item != nil {
			status, typ = m.item(d.Body, m.seen[id])
		}
		if status == 201 {
			if _, dup := m.docs[id]; dup && d.Op == logproto.OpCreate {
				status, typ = 409, "version_conflict_engine_exception"
			} else {
				m.docs[id] = d.Body
				m.writes[id]++
			}
		}
		items[i] = logproto.ItemReply{Op: d.Op, Index: d.Index, ID: d.ID, Status: status, Type: typ, Reason: "mock says " + typ}
	}
	m.requests = append(m.requests, ids)
	ctx.SetContentType("application/json")
	ctx.SetBody(logproto.AppendBulkReply(nil, time.Millisecond, items))
}

func bulkTarget(url string) policies.Target {
	t := batchTarget(url, policies.Batch{MaxMessages: 50, MaxBytes: 1 << 20, MaxWait: 50 * ms, Format: policies.FormatNDJSON})
	t.Protocol = policies.ProtocolElasticsearchBulk
	return t
}

// TestBulkItemRetries: the store answers some items 429 (the first two
// times it sees them) and some 400 (always). The 429 items alone are sent
// again, until stored; the 400 items are dead with the store's reason;
// every other document is stored once, under its message id.
func TestBulkItemRetries(t *testing.T) {
	es := newMockES(func(doc []byte, seen int) (int, string) {
		var o struct{ Order int }
		json.Unmarshal(doc, &o)
		switch {
		case o.Order%13 == 5:
			return 400, "mapper_parsing_exception"
		case o.Order%4 == 1 && seen <= 2:
			return 429, "es_rejected_execution_exception"
		}
		return 201, ""
	})
	ds := newDownstream(t, es.respond)
	_, q, _ := newQueue(t, "logs")
	const n = 300
	msgs := appendN(t, q, n, order)
	d, _ := startDrainer(t, Config{Route: "logs", Target: bulkTarget(ds.url + "/logs")}, consumer(t, q, "logs"))
	dead := 0
	for i := range n {
		if i%13 == 5 {
			dead++
		}
	}
	waitFor(t, 20*time.Second, "every message delivered or dead", func() bool {
		st := d.Stats()
		return st.Delivered+st.Dead == n
	})
	if st := d.Stats(); st.Dead != uint64(dead) {
		t.Errorf("%d dead, want %d", st.Dead, dead)
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	for i, m := range msgs {
		id := m.ID.String()
		if i%13 == 5 {
			if _, ok := es.docs[id]; ok {
				t.Errorf("order %d stored though refused", i)
			}
			st := status(t, q, m.ID, "logs")
			if st.Phase != buffer.Dead || len(st.History) != 1 || st.History[0].Status != 400 ||
				!strings.Contains(st.History[0].Error, "400 mapper_parsing_exception: mock says mapper_parsing_exception") {
				t.Errorf("order %d: %s %+v", i, st.Phase, st.History)
			}
			continue
		}
		if es.writes[id] != 1 || string(es.docs[id]) != string(m.Body) {
			t.Errorf("order %d written %d times", i, es.writes[id])
		}
		if want := 1; i%4 == 1 && i%13 != 5 {
			want = 3
			if es.seen[id] != want {
				t.Errorf("order %d sent %d times, want %d", i, es.seen[id], want)
			}
		} else if es.seen[id] != want {
			t.Errorf("order %d sent %d times, want %d (a delivered item was sent again)", i, es.seen[id], want)
		}
	}
}

// TestBulkUnreadableReplyRetriedWhole: a 200 whose body is no bulk reply is
// not taken for a success: the batch is sent again, with the same _ids, so
// the store holds each document once.
func TestBulkUnreadableReplyRetriedWhole(t *testing.T) {
	es := newMockES(nil)
	es.badReply = 1
	ds := newDownstream(t, es.respond)
	_, q, _ := newQueue(t, "logs")
	const n = 20
	msgs := appendN(t, q, n, order)
	target := bulkTarget(ds.url)
	target.Concurrency = 1
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })
	es.mu.Lock()
	defer es.mu.Unlock()
	if len(es.docs) != n {
		t.Errorf("%d documents stored, want %d", len(es.docs), n)
	}
	st := status(t, q, msgs[0].ID, "logs")
	if st.Attempts != 2 || !strings.Contains(st.History[0].Error, "is not JSON") {
		t.Errorf("history %+v", st.History)
	}
}

// TestBulkCreateConflictIsDelivered: a batch sent again after its reply was
// lost gets 409 for documents the first attempt stored; they are
// delivered, not dead.
func TestBulkCreateConflictIsDelivered(t *testing.T) {
	es := newMockES(nil)
	_, q, _ := newQueue(t, "logs")
	msgs := appendN(t, q, 10, order)
	for _, m := range msgs[:5] {
		es.docs[m.ID.String()] = m.Body // stored by an attempt whose reply was lost
	}
	ds := newDownstream(t, es.respond)
	d, _ := startDrainer(t, Config{Route: "logs", Target: bulkTarget(ds.url)}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == 10 })
	if st := d.Stats(); st.Dead != 0 || st.Retried != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestBulkActionFromIngest: a document stored by an elasticsearch route is
// sent with its own action (op, index, own _id).
func TestBulkActionFromIngest(t *testing.T) {
	es := newMockES(nil)
	ds := newDownstream(t, es.respond)
	_, q, _ := newQueue(t, "logs")
	appendN(t, q, 1, func(int) *buffer.Message {
		return &buffer.Message{Method: "POST", URI: "/_bulk", Body: []byte(`{"m":1}`), Header: []buffer.Header{
			{Name: logproto.HeaderOp, Value: "index"}, {Name: logproto.HeaderMeta, Value: `{"_index":"app","pipeline":"p"}`}, {Name: logproto.HeaderID, Value: `"own-1"`}}}
	})
	d, _ := startDrainer(t, Config{Route: "logs", Target: bulkTarget(ds.url)}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "delivered", func() bool { return d.Stats().Delivered == 1 })
	hits := ds.snapshot()
	if want := "{\"index\":{\"_id\":\"own-1\",\"_index\":\"app\",\"pipeline\":\"p\"}}\n{\"m\":1}\n"; string(hits[0].body) != want {
		t.Errorf("body %q, want %q", hits[0].body, want)
	}
}

// TestBulkGzip: with compression gzip each batch is sent gzipped; the store
// decodes it to the same documents.
func TestBulkGzip(t *testing.T) {
	es := newMockES(nil)
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if enc, _ := h.get("Content-Encoding"); enc != "gzip" {
			t.Errorf("Content-Encoding %q", enc)
		}
		plain, err := logproto.Decode(h.body, "gzip", 1<<20)
		if err != nil {
			t.Errorf("body: %v", err)
		}
		if len(h.body)*3 > len(plain) {
			t.Errorf("gzip body of %d bytes for %d: not compressed", len(h.body), len(plain))
		}
		h.body = plain
		es.respond(h, ctx)
	})
	_, q, _ := newQueue(t, "logs")
	const n = 200
	appendN(t, q, n, func(i int) *buffer.Message {
		return &buffer.Message{Method: "POST", URI: "/", Body: fmt.Appendf(nil, `{"order":%d,"msg":"%s"}`, i, strings.Repeat("log line ", 20))}
	})
	target := bulkTarget(ds.url)
	target.Compression = policies.CompressionGzip
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })
	es.mu.Lock()
	defer es.mu.Unlock()
	if len(es.docs) != n {
		t.Errorf("%d documents stored", len(es.docs))
	}
}

// TestByteRate: 100 messages of ~1 KiB at byte_rate 20KiB/s (burst: one
// batch of max_bytes 10KiB, or one second of the rate) take about 4 s
// after the first second's burst, however many requests per second the
// target allows.
func TestByteRate(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "logs")
	const n = 100
	appendN(t, q, n, func(i int) *buffer.Message {
		return &buffer.Message{Method: "POST", URI: "/", Body: fmt.Appendf(nil, `{"order":%d,"pad":"%s"}`, i, strings.Repeat("x", 1000))}
	})
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 10, MaxBytes: 10 << 10, MaxWait: 10 * ms, Format: policies.FormatNDJSON})
	target.ByteRate = 20 << 10
	start := time.Now()
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 20*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })
	took := time.Since(start)
	total := 0
	var first time.Time
	for i, h := range ds.snapshot() {
		if i == 0 {
			first = h.at
		}
		total += len(h.body)
		// Bytes sent by each instant: never more than the burst plus the
		// rate times the time since the first request.
		if allowed := float64(20<<10) + float64(20<<10)*h.at.Sub(first).Seconds(); float64(total) > allowed*1.02 {
			t.Errorf("%d bytes sent by %v, rate allows %.0f", total, h.at.Sub(first), allowed)
		}
	}
	if want := time.Duration(float64(total-(20<<10)) / float64(20<<10) * float64(time.Second)); took < want*9/10 {
		t.Errorf("%d bytes in %v; byte_rate 20KiB/s needs at least %v", total, took, want)
	}
}

// TestLokiDelivery: entries stored by a loki route (and one from another
// protocol) reach Loki's push API grouped into streams; a failed push is
// retried whole.
func TestLokiDelivery(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if h.uri != "/loki/api/v1/push" {
			t.Errorf("push to %s", h.uri)
		}
		if h.attempt == 1 {
			ctx.SetStatusCode(503)
			return
		}
		docs, err := logproto.ParseLoki(h.body, "application/json", 1<<20)
		if err != nil {
			t.Errorf("push body: %v", err)
			ctx.SetStatusCode(400)
			return
		}
		mu.Lock()
		for _, d := range docs {
			var e logproto.LokiEntry
			json.Unmarshal(d.Body, &e)
			got[e.Labels["job"]+"/"+e.Line]++
		}
		mu.Unlock()
		ctx.SetStatusCode(204)
	})
	_, q, _ := newQueue(t, "logs")
	const n = 40
	appendN(t, q, n, func(i int) *buffer.Message {
		if i == 0 {
			return &buffer.Message{Method: "POST", URI: "/", Body: []byte("plain line")}
		}
		b, _ := json.Marshal(logproto.LokiEntry{Labels: map[string]string{"job": fmt.Sprint("j", i%3)}, TS: fmt.Sprint(1710000000000000000 + i), Line: fmt.Sprint("line ", i)})
		return &buffer.Message{Method: "POST", URI: "/loki/api/v1/push", Body: b, Header: []buffer.Header{{Name: logproto.HeaderProtocol, Value: "loki"}}}
	})
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 100, MaxBytes: 1 << 20, MaxWait: 50 * ms, Format: policies.FormatNDJSON})
	target.Protocol = policies.ProtocolLoki
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == n })
	mu.Lock()
	defer mu.Unlock()
	if got["/plain line"] != 1 {
		t.Errorf("the plain message: %v", got)
	}
	for i := 1; i < n; i++ {
		if c := got[fmt.Sprintf("j%d/line %d", i%3, i)]; c != 1 {
			t.Errorf("entry %d arrived %d times", i, c)
		}
	}
}

// TestOTLPDelivery: records stored by an otlp route, protobuf and JSON,
// go out as one export per encoding; a message that is not an OTLP export
// is dead; a failed export is retried.
func TestOTLPDelivery(t *testing.T) {
	var mu sync.Mutex
	recs := map[string]int{}
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		ct, _ := h.get("Content-Type")
		if h.uri != "/otel/v1/logs" || (ct != logproto.OTLPJSON && ct != logproto.OTLPProtobuf) {
			t.Errorf("export to %s as %q", h.uri, ct)
		}
		if h.attempt == 1 && ct == logproto.OTLPJSON {
			ctx.SetStatusCode(503)
			return
		}
		docs, err := logproto.ParseOTLPLogs(h.body, ct)
		if err != nil {
			t.Errorf("export: %v", err)
		}
		mu.Lock()
		recs[ct] += len(docs)
		mu.Unlock()
		ctx.SetContentType(ct)
		ctx.SetBody(logproto.OTLPSuccess(ct))
	})
	jsonDocs, err := logproto.ParseOTLPLogs([]byte(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"a"}},{"body":{"stringValue":"b"}}]}]}]}`), logproto.OTLPJSON)
	if err != nil {
		t.Fatal(err)
	}
	pb := []byte{0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0x2a, 0x00} // resourceLogs{scopeLogs{logRecords{body{}}}}
	pbDocs, err := logproto.ParseOTLPLogs(pb, logproto.OTLPProtobuf)
	if err != nil || len(pbDocs) != 1 {
		t.Fatal(err, len(pbDocs))
	}
	bodies := [][]byte{jsonDocs[0].Body, jsonDocs[1].Body, pbDocs[0].Body, pbDocs[0].Body, []byte("plain text")}
	_, q, _ := newQueue(t, "logs")
	msgs := appendN(t, q, len(bodies), func(i int) *buffer.Message { return &buffer.Message{Method: "POST", URI: "/v1/logs", Body: bodies[i]} })
	target := batchTarget(ds.url+"/otel", policies.Batch{MaxMessages: 100, MaxBytes: 1 << 20, MaxWait: 50 * ms, Format: policies.FormatNDJSON})
	target.Protocol = policies.ProtocolOTLP
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered or dead", func() bool { st := d.Stats(); return st.Delivered+st.Dead == 5 })
	mu.Lock()
	defer mu.Unlock()
	if recs[logproto.OTLPJSON] != 2 || recs[logproto.OTLPProtobuf] != 2 {
		t.Errorf("records received %v", recs)
	}
	if st := status(t, q, msgs[4].ID, "logs"); st.Phase != buffer.Dead {
		t.Errorf("plain text: %s", st.Phase)
	}
	if st := status(t, q, msgs[0].ID, "logs"); st.Attempts != 2 {
		t.Errorf("JSON record attempts %d, want 2 (503 first)", st.Attempts)
	}
}

// TestHECDelivery: events from a splunk-hec route go as they came, others
// are wrapped; the target's headers carry the token; a 400 naming an
// invalid event makes that event dead and sends the others again.
func TestHECDelivery(t *testing.T) {
	var mu sync.Mutex
	indexed := map[string]int{}
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if auth, _ := h.get("Authorization"); auth != "Splunk tok-1" || h.uri != "/services/collector/event" {
			t.Errorf("%s with Authorization %q", h.uri, auth)
		}
		docs, err := logproto.ParseHEC(h.body)
		if err != nil {
			t.Errorf("HEC body: %v", err)
			ctx.SetStatusCode(400)
			return
		}
		for i, d := range docs {
			if bytes.Contains(d.Body, []byte("poison")) {
				ctx.SetStatusCode(400)
				ctx.SetBody(logproto.HECReply("Invalid data format", logproto.HECInvalidFormat, i))
				return
			}
		}
		mu.Lock()
		for _, d := range docs {
			var e struct {
				Event any
				Host  string
			}
			json.Unmarshal(d.Body, &e)
			indexed[fmt.Sprint(e.Event)+"@"+e.Host]++
		}
		mu.Unlock()
		ctx.SetBody(logproto.HECReply("Success", 0, -1))
	})
	// Messages 0 and 2 were stored by a splunk-hec route; the others (an
	// ECS document with its own "event" field among them) were not.
	bodies := []string{`{"event":"from hec","host":"h1"}`, `plain text line`, `{"event":"poison"}`, `{"msg":"json doc"}`, `{"event":{"kind":"ecs"},"message":"m"}`}
	_, q, _ := newQueue(t, "logs")
	msgs := appendN(t, q, len(bodies), func(i int) *buffer.Message {
		m := &buffer.Message{Method: "POST", URI: "/", Body: []byte(bodies[i])}
		if i == 0 || i == 2 {
			m.Header = []buffer.Header{{Name: logproto.HeaderProtocol, Value: "splunk-hec"}}
		}
		return m
	})
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 100, MaxBytes: 1 << 20, MaxWait: 50 * ms, Format: policies.FormatNDJSON})
	target.Protocol = policies.ProtocolSplunkHEC
	target.Headers = []policies.HeaderField{{Name: "Authorization", Value: "Splunk tok-1"}}
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered or dead", func() bool { st := d.Stats(); return st.Delivered+st.Dead == 5 })
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"from hec@h1", "plain text line@", "map[msg:json doc]@", "map[event:map[kind:ecs] message:m]@"} {
		if indexed[want] != 1 {
			t.Errorf("%s indexed %d times (%v)", want, indexed[want], indexed)
		}
	}
	for i, m := range msgs {
		st := status(t, q, m.ID, "logs")
		if (i == 2) != (st.Phase == buffer.Dead) {
			t.Errorf("message %d (%s): %s %+v", i, bodies[i], st.Phase, st.History)
		}
	}
}

// TestBatchDecodesContentEncoding: a gzip or deflate body stored by an http
// route goes into an NDJSON batch decoded, not as binary (nor dead because
// a compressed byte is a line break); a body that does not decode is dead
// with the reason.
func TestBatchDecodesContentEncoding(t *testing.T) {
	ds := newDownstream(t, nil)
	_, q, _ := newQueue(t, "logs")
	gzipped := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}
	// Find a document whose gzip form holds a line break, as the issue saw.
	var withNL string
	for i := 0; ; i++ {
		withNL = fmt.Sprintf(`{"n":%d}`, i)
		if bytes.IndexByte(gzipped(withNL), '\n') >= 0 {
			break
		}
	}
	bodies := [][]byte{gzipped(`{"a":1}`), gzipped(withNL), []byte("not gzip")}
	msgs := appendN(t, q, len(bodies), func(i int) *buffer.Message {
		return &buffer.Message{Method: "POST", URI: "/", Body: bodies[i], Header: []buffer.Header{{Name: "Content-Encoding", Value: "gzip"}}}
	})
	target := batchTarget(ds.url, policies.Batch{MaxMessages: 10, MaxBytes: 1 << 20, MaxWait: 20 * ms, Format: policies.FormatNDJSON})
	d, _ := startDrainer(t, Config{Route: "logs", Target: target}, consumer(t, q, "logs"))
	waitFor(t, 10*time.Second, "every message delivered or dead", func() bool { st := d.Stats(); return st.Delivered+st.Dead == 3 })
	got := map[string]bool{}
	for _, h := range ds.snapshot() {
		for _, l := range lines(h) {
			got[l] = true
		}
	}
	if !got[`{"a":1}`] || !got[withNL] || len(got) != 2 {
		t.Errorf("lines %v", got)
	}
	if st := status(t, q, msgs[2].ID, "logs"); st.Phase != buffer.Dead || !strings.Contains(st.History[0].Error, "Content-Encoding") {
		t.Errorf("undecodable body: %s %+v", st.Phase, st.History)
	}
}
