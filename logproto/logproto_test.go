package logproto

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\ngot:  %s\nwant: %s", path, got, want)
	}
}

// TestBulkGolden parses request bodies in the shapes the Elasticsearch
// outputs of rsyslog, Filebeat, Fluent Bit, Logstash and Vector send, checks
// each document, and compares the reply built for them, and the delivery
// batch rebuilt from what is stored, with golden files.
func TestBulkGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/bulk/*.ndjson")
	if len(files) < 5 {
		t.Fatalf("want the 5 shippers' bodies, found %d", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".ndjson")
		t.Run(name, func(t *testing.T) {
			body, _ := os.ReadFile(f)
			docs, err := ParseBulk(body, "")
			if err != nil {
				t.Fatal(err)
			}
			if want := bytes.Count(body, []byte{'\n'}) / 2; len(docs) != want {
				t.Fatalf("%d docs, want %d", len(docs), want)
			}
			items := make([]ItemReply, len(docs))
			var batch []byte
			for i, d := range docs {
				if !json.Valid(d.Body) || bytes.ContainsAny(d.Body, "\r\n") {
					t.Fatalf("doc %d is not one line of JSON: %q", i, d.Body)
				}
				msgID := "0000000000000msgid" + string(rune('a'+i))
				id := d.ID
				if id == nil {
					id, _ = json.Marshal(msgID)
				}
				items[i] = ItemReply{Op: d.Op, Index: d.Index, ID: id, Status: 201}
				batch = AppendAction(batch, d.Op, d.Meta, d.ID, msgID)
				batch = append(append(batch, d.Body...), '\n')
			}
			reply := AppendBulkReply(nil, 0, items)
			if !json.Valid(reply) {
				t.Fatalf("reply is not JSON: %s", reply)
			}
			golden(t, "bulk/"+name+".reply.json", reply)
			golden(t, "bulk/"+name+".batch.golden", batch)
			// The batch is itself a valid bulk body whose documents are the
			// same, each with an _id.
			again, err := ParseBulk(batch, "")
			if err != nil || len(again) != len(docs) {
				t.Fatalf("batch does not parse back: %v (%d docs)", err, len(again))
			}
			for i := range again {
				if again[i].ID == nil || !bytes.Equal(again[i].Body, docs[i].Body) || again[i].Index != docs[i].Index {
					t.Errorf("doc %d changed on the way: %+v vs %+v", i, again[i], docs[i])
				}
			}
		})
	}
}

func TestParseBulkRefusesWhole(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"not json", "{\"index\":{\"_index\":\"a\"}}\n{\"m\":1}\nsecret-bytes\n{\"m\":2}\n", "line 3: the action line is not a JSON object"},
		{"doc not object", "{\"index\":{\"_index\":\"a\"}}\n[1,2]\n", "line 2: the document of the index action on line 1 is not a JSON object"},
		{"missing doc", "{\"index\":{\"_index\":\"a\"}}\n{\"m\":1}\n{\"create\":{\"_index\":\"a\"}}\n", "line 3: the create action has no document line after it"},
		{"unknown action", "{\"upsert\":{\"_index\":\"a\"}}\n{\"m\":1}\n", "unknown action"},
		{"update without doc", "{\"update\":{\"_index\":\"a\",\"_id\":\"1\"}}\n", "the update action has no document line"},
		{"no index", "{\"index\":{}}\n{\"m\":1}\n", "names no _index"},
		{"two actions", "{\"index\":{},\"create\":{}}\n{\"m\":1}\n", "exactly one action"},
		{"bad id", "{\"index\":{\"_index\":\"a\",\"_id\":7}}\n{\"m\":1}\n", "_id must be a non-empty string"},
		{"empty", "\n\n", "no requests added"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			docs, err := ParseBulk([]byte(c.body), "")
			var pe *Error
			if !errors.As(err, &pe) || pe.Status != 400 {
				t.Fatalf("got %v, %v; want a 400 *Error", docs, err)
			}
			if !strings.Contains(pe.Reason, c.want) {
				t.Errorf("reason %q does not say %q", pe.Reason, c.want)
			}
			if strings.Contains(pe.Reason, "secret") {
				t.Errorf("reason echoes the request: %q", pe.Reason)
			}
			body := ElasticsearchError(pe)
			var e struct {
				Error struct {
					RootCause []struct{ Type, Reason string } `json:"root_cause"`
					Type      string
				}
				Status int
			}
			if json.Unmarshal(body, &e) != nil || e.Status != 400 || e.Error.Type == "" || len(e.Error.RootCause) != 1 {
				t.Errorf("not an Elasticsearch error body: %s", body)
			}
		})
	}
}

func TestParseBulkDefaultIndex(t *testing.T) {
	docs, err := ParseBulk([]byte("{\"create\":{}}\n{\"m\":1}\n{\"index\":{\"_index\":\"own\"}}\n{\"m\":2}"), "fromurl")
	if err != nil {
		t.Fatal(err)
	}
	if docs[0].Index != "fromurl" || string(docs[0].Meta) != `{"_index":"fromurl"}` || docs[1].Index != "own" {
		t.Errorf("indices: %+v", docs)
	}
	if string(docs[1].Body) != `{"m":2}` {
		t.Errorf("last doc without a newline: %q", docs[1].Body)
	}
}

func TestBulkIndex(t *testing.T) {
	for path, want := range map[string]string{"/_bulk": "", "/logs/_bulk": "logs", "/logs/_bulk/": "logs"} {
		if ix, ok := BulkIndex(path); !ok || ix != want {
			t.Errorf("%s: %q %v", path, ix, ok)
		}
	}
	for _, path := range []string{"/", "/a/b/_bulk", "/_x/_bulk", "/logs/_doc", "//_bulk"} {
		if _, ok := BulkIndex(path); ok {
			t.Errorf("%s taken for _bulk", path)
		}
	}
}

func TestProbe(t *testing.T) {
	cases := []struct {
		method, path string
		ok           bool
		has          string
	}{
		{"GET", "/", true, `"number":"` + ElasticsearchVersion},
		{"HEAD", "/", true, "tagline"},
		{"GET", "/_cluster/health", true, `"status":"green"`},
		{"HEAD", "/_cat/health", true, ""},
		{"GET", "/_license", true, `"status":"active"`},
		{"HEAD", "/_index_template/filebeat-8.17.0", true, ""},
		{"PUT", "/_index_template/filebeat-8.17.0", true, `"acknowledged":true`},
		{"PUT", "/_ilm/policy/logs", true, `"acknowledged":true`},
		{"PUT", "/logs-index", true, `"index":"logs-index"`},
		{"POST", "/logs/_doc", false, "illegal_argument_exception"},
		{"POST", "/_search", false, "illegal_argument_exception"},
		{"DELETE", "/logs", false, "illegal_argument_exception"},
	}
	for _, c := range cases {
		status, body, ok := Probe(c.method, c.path)
		if ok != c.ok || !strings.Contains(string(body), c.has) || (ok && status != 200) || (!ok && status != 400) {
			t.Errorf("%s %s: %d %v %s", c.method, c.path, status, ok, body)
		}
		if len(body) > 0 && !json.Valid(body) && !strings.HasPrefix(c.path, "/_cat") {
			t.Errorf("%s %s: body is not JSON: %s", c.method, c.path, body)
		}
	}
}

func TestBulkReplyErrors(t *testing.T) {
	id, _ := json.Marshal("x")
	b := AppendBulkReply(nil, 0, []ItemReply{
		{Op: "create", Index: "a", ID: id, Status: 201},
		{Op: "create", Index: "a", ID: id, Status: 429, Type: "es_rejected_execution_exception", Reason: "storage is full"},
	})
	items, ok, err := ParseBulkReply(b, 2)
	if err != nil || ok || items[0].Status != 201 || items[1].Status != 429 || items[1].Type != "es_rejected_execution_exception" || items[1].Reason != "storage is full" {
		t.Fatalf("%s -> %+v %v %v", b, items, ok, err)
	}
}

func TestParseBulkReply(t *testing.T) {
	cases := []struct {
		name, body string
		n          int
		ok         bool
		statuses   []int
		err        string
	}{
		{"all ok", `{"took":3,"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}`, 2, true, nil, ""},
		{"filtered ok", `{"errors":false}`, 2, true, nil, ""},
		{"some 429", `{"took":3,"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},{"index":{"status":400,"error":"bad"}}]}`, 3, false, []int{201, 429, 400}, ""},
		{"not json", `<html>`, 1, false, nil, "not JSON"},
		{"no errors field", `{"items":[]}`, 1, false, nil, "no errors field"},
		{"short", `{"errors":true,"items":[{"create":{"status":201}}]}`, 2, false, nil, "1 items for 2"},
		{"short ok", `{"errors":false,"items":[{"create":{"status":201}}]}`, 2, false, nil, "1 items for 2"},
		{"no status", `{"errors":true,"items":[{"create":{}}]}`, 1, false, nil, "no status"},
	}
	for _, c := range cases {
		items, ok, err := ParseBulkReply([]byte(c.body), c.n)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || ok {
				t.Errorf("%s: %v %v, want error %q", c.name, ok, err, c.err)
			}
			continue
		}
		if err != nil || ok != c.ok || len(items) != len(c.statuses) {
			t.Errorf("%s: %+v %v %v", c.name, items, ok, err)
			continue
		}
		for i, s := range c.statuses {
			if items[i].Status != s {
				t.Errorf("%s: item %d status %d, want %d", c.name, i, items[i].Status, s)
			}
		}
	}
}

func TestAppendAction(t *testing.T) {
	cases := []struct {
		op, meta, own, want string
	}{
		{"create", `{"_index":"a"}`, "", `{"create":{"_id":"m1","_index":"a"}}`},
		{"index", `{"_index":"a","routing":null}`, `"own"`, `{"index":{"_id":"own","_index":"a","routing":null}}`},
		{"", "", "", `{"create":{"_id":"m1"}}`},
		{"", "{}", "", `{"create":{"_id":"m1"}}`},
	}
	for _, c := range cases {
		got := AppendAction(nil, c.op, []byte(c.meta), []byte(c.own), "m1")
		if string(got) != c.want+"\n" {
			t.Errorf("%+v: %s", c, got)
		}
	}
}

func TestNDJSON(t *testing.T) {
	docs, err := ParseNDJSON([]byte("{\"a\":1}\r\n\n\"s\"\n[1]"))
	if err != nil || len(docs) != 3 || string(docs[0].Body) != `{"a":1}` {
		t.Fatalf("%+v %v", docs, err)
	}
	// A body that is one JSON array gives its elements.
	docs, err = ParseNDJSON([]byte("[\n {\"date\": 1.5, \"log\": \"a\"},\n {\"log\": \"b\"}\n]\n"))
	if err != nil || len(docs) != 2 || string(docs[0].Body) != `{"date": 1.5, "log": "a"}` {
		t.Fatalf("array: %+v %v", docs, err)
	}
	_, err = ParseNDJSON([]byte("{\"a\":1}\nsecret\n"))
	var pe *Error
	if !errors.As(err, &pe) || pe.Status != 400 || pe.Reason != "line 2 is not JSON" {
		t.Fatalf("%v", err)
	}
}

func TestDecode(t *testing.T) {
	plain := bytes.Repeat([]byte("{\"m\":\"0123456789\"}\n"), 1000)
	var gz, zl bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(plain)
	w.Close()
	z := zlib.NewWriter(&zl)
	z.Write(plain)
	z.Close()
	for enc, body := range map[string][]byte{"gzip": gz.Bytes(), "deflate": zl.Bytes(), "": plain, "identity": plain} {
		got, err := Decode(body, enc, int64(len(plain)))
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("%s: %v", enc, err)
		}
		if _, err := Decode(body, enc, int64(len(plain))-1); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s over the limit: %v", enc, err)
		}
	}
	var pe *Error
	if _, err := Decode([]byte("not gzip"), "gzip", 100); !errors.As(err, &pe) || pe.Status != 400 {
		t.Errorf("corrupt gzip: %v", err)
	}
	if _, err := Decode(gz.Bytes()[:len(gz.Bytes())-10], "gzip", 1<<20); !errors.As(err, &pe) || pe.Status != 400 {
		t.Errorf("cut gzip: %v", err)
	}
	if _, err := Decode(plain, "br", 1<<20); !errors.As(err, &pe) || pe.Status != 415 {
		t.Errorf("br: %v", err)
	}
}

// TestDecodeBomb: 1 GiB of zeros gzipped (~1 MiB) is refused having
// decoded no more than the limit.
func TestDecodeBomb(t *testing.T) {
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 64 {
		w.Write(zeros)
	}
	w.Close()
	if _, err := Decode(gz.Bytes(), "gzip", 1<<20); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("bomb: %v", err)
	}
}

// BenchmarkParseBulk: a body of 500 documents of ~200 bytes, one action
// line repeated (Filebeat's, Fluent Bit's shape).
func BenchmarkParseBulk(b *testing.B) {
	var body []byte
	for i := range 500 {
		body = append(body, "{\"create\":{\"_index\":\"logs\"}}\n"...)
		body = append(body, fmt.Sprintf("{\"@timestamp\":\"2026-12-05T01:00:00Z\",\"msg\":\"line %d %s\"}\n", i, strings.Repeat("x", 140))...)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseBulk(body, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// The URL's pipeline and routing go into each action that names none.
func TestParseBulkURLDefaults(t *testing.T) {
	docs, err := ParseBulkWith([]byte("{\"create\":{}}\n{\"m\":1}\n{\"create\":{\"pipeline\":\"own\"}}\n{\"m\":2}\n"),
		BulkDefaults{Index: "logs", Pipeline: "fb-pipe", Routing: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(docs[0].Meta); got != `{"_index":"logs","pipeline":"fb-pipe","routing":"r1"}` {
		t.Errorf("meta %s", got)
	}
	if got := string(docs[1].Meta); got != `{"_index":"logs","pipeline":"own","routing":"r1"}` {
		t.Errorf("meta %s", got)
	}
}

// update and delete are parsed (update with its document line, delete
// without one) and come back refused, between the stored actions.
func TestParseBulkUpdateDeleteRefusedPerItem(t *testing.T) {
	body := "{\"index\":{\"_index\":\"a\"}}\n{\"m\":1}\n" +
		"{\"delete\":{\"_index\":\"a\",\"_id\":\"7\"}}\n" +
		"{\"update\":{\"_id\":\"8\"}}\n{\"doc\":{\"m\":2}}\n" +
		"{\"create\":{\"_index\":\"b\"}}\n{\"m\":3}\n"
	docs, err := ParseBulk([]byte(body), "u")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		op, index, id string
		refused       bool
	}{
		{OpIndex, "a", "", false}, {OpDelete, "a", `"7"`, true}, {OpUpdate, "u", `"8"`, true}, {OpCreate, "b", "", false},
	}
	if len(docs) != len(want) {
		t.Fatalf("%d docs, want %d", len(docs), len(want))
	}
	for i, w := range want {
		d := docs[i]
		if d.Op != w.op || d.Index != w.index || string(d.ID) != w.id || (d.Refused != "") != w.refused {
			t.Errorf("doc %d: %+v, want %+v", i, d, w)
		}
		if w.refused && (d.Body != nil || d.Meta != nil) {
			t.Errorf("doc %d: a refused action keeps a body or metadata", i)
		}
	}
}
