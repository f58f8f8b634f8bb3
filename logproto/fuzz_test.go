package logproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParseBulk: any body either parses into documents that are each one
// line of JSON with an op and an index, and that survive a rebuild into a
// delivery batch; or is refused whole with a 400 *Error that echoes none of
// it.
func FuzzParseBulk(f *testing.F) {
	f.Add([]byte("{\"index\":{\"_index\":\"a\"}}\n{\"m\":1}\n"), "")
	f.Add([]byte("{\"create\":{}}\n{\"m\":1}\n{\"create\":{\"_id\":\"x\"}}\n{}"), "logs")
	f.Add([]byte("{\"delete\":{\"_index\":\"a\"}}\n"), "")
	f.Fuzz(func(t *testing.T, body []byte, index string) {
		docs, err := ParseBulk(body, index)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Status != 400 || docs != nil {
				t.Fatalf("%v %v", docs, err)
			}
			return
		}
		var batch []byte
		for _, d := range docs {
			if d.Refused != "" {
				if (d.Op != OpUpdate && d.Op != OpDelete) || d.Body != nil {
					t.Fatalf("bad refused doc %+v", d)
				}
				continue
			}
			if !json.Valid(d.Body) || bytes.ContainsAny(d.Body, "\n") || d.Index == "" || (d.Op != OpIndex && d.Op != OpCreate) {
				t.Fatalf("bad doc %+v", d)
			}
			batch = AppendAction(batch, d.Op, d.Meta, d.ID, "mid")
			batch = append(append(batch, d.Body...), '\n')
		}
		stored := 0
		for _, d := range docs {
			if d.Refused == "" {
				stored++
			}
		}
		if stored == 0 {
			return
		}
		again, err := ParseBulk(batch, "")
		if err != nil || len(again) != stored {
			t.Fatalf("rebuilt batch: %v", err)
		}
	})
}

// FuzzParseBulkReply: any reply either yields n items, or allOK, or an
// error; never a short list taken for success.
func FuzzParseBulkReply(f *testing.F) {
	f.Add([]byte(`{"errors":true,"items":[{"create":{"status":429}}]}`), 1)
	f.Add([]byte(`{"errors":false}`), 3)
	f.Fuzz(func(t *testing.T, body []byte, n int) {
		if n < 0 || n > 1000 {
			return
		}
		items, ok, err := ParseBulkReply(body, n)
		if err == nil && !ok && len(items) != n {
			t.Fatalf("%d items for %d", len(items), n)
		}
		if err != nil && ok {
			t.Fatal("error and ok")
		}
	})
}

// FuzzNDJSON: documents are JSON lines, or the body is refused whole.
func FuzzNDJSON(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n[2]\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		docs, err := ParseNDJSON(body)
		if err != nil {
			return
		}
		for _, d := range docs {
			if d.Refused != "" {
				if (d.Op != OpUpdate && d.Op != OpDelete) || d.Body != nil {
					t.Fatalf("bad refused doc %+v", d)
				}
				continue
			}
			if !json.Valid(d.Body) || bytes.ContainsAny(d.Body, "\n") {
				t.Fatalf("bad doc %q", d.Body)
			}
		}
	})
}

// FuzzDecode: never more than limit bytes out.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"), "gzip")
	f.Add([]byte("x\x9c\x03\x00\x00\x00\x00\x01"), "deflate")
	f.Fuzz(func(t *testing.T, body []byte, enc string) {
		out, err := Decode(body, enc, 4096)
		if err == nil && len(out) > 4096 {
			t.Fatalf("%d bytes out", len(out))
		}
	})
}

// FuzzParseHEC: documents are one line of JSON objects, or the body is
// refused whole with a HEC error.
func FuzzParseHEC(f *testing.F) {
	f.Add([]byte(`{"event":"a","time":1}{"event":{"b":2}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		docs, err := ParseHEC(body)
		if err != nil {
			var he *HECError
			if !errors.As(err, &he) || docs != nil {
				t.Fatalf("%v", err)
			}
			return
		}
		for _, d := range docs {
			if d.Refused != "" {
				if (d.Op != OpUpdate && d.Op != OpDelete) || d.Body != nil {
					t.Fatalf("bad refused doc %+v", d)
				}
				continue
			}
			if !json.Valid(d.Body) || bytes.ContainsAny(d.Body, "\r\n") || d.Body[0] != '{' {
				t.Fatalf("bad doc %q", d.Body)
			}
		}
	})
}

// FuzzParseLoki: JSON or snappy protobuf; documents are LokiEntry JSON, or
// the body is refused.
func FuzzParseLoki(f *testing.F) {
	f.Add([]byte(`{"streams":[{"stream":{"a":"b"},"values":[["1","x"]]}]}`), false)
	f.Add(promtailBody(map[string][]string{`{a="b"}`: {"x", "y"}}), true)
	f.Fuzz(func(t *testing.T, body []byte, proto bool) {
		ct := "application/json"
		if proto {
			ct = "application/x-protobuf"
		}
		docs, err := ParseLoki(body, ct, 1<<16)
		if err != nil {
			return
		}
		for _, d := range docs {
			var e LokiEntry
			if json.Unmarshal(d.Body, &e) != nil || len(e.Labels) == 0 || !validTS(e.TS) || bytes.ContainsAny(d.Body, "\n") {
				t.Fatalf("bad doc %q", d.Body)
			}
		}
	})
}

// FuzzParseOTLPLogs: every document is a request of exactly one record that
// parses again to itself, or the body is refused.
func FuzzParseOTLPLogs(f *testing.F) {
	f.Add(collectorRequest(), false)
	f.Add([]byte(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"x"}}]}]}]}`), true)
	f.Fuzz(func(t *testing.T, body []byte, isJSON bool) {
		enc := OTLPProtobuf
		if isJSON {
			enc = OTLPJSON
		}
		docs, err := ParseOTLPLogs(body, enc)
		if err != nil {
			return
		}
		for _, d := range docs {
			again, err := ParseOTLPLogs(d.Body, enc)
			if err != nil || len(again) != 1 || !bytes.Equal(again[0].Body, d.Body) {
				t.Fatalf("doc %q does not parse to itself: %v", d.Body, err)
			}
		}
	})
}

// FuzzValidJSON: the validator every document goes through agrees with
// encoding/json.Valid.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":01}`, `{"a":1.}`, `{"a":"\u12"}`, "{\"a\":\"\t\"}", "{\"a\":\"\xff\"}",
		`[1,]`, `{"a":1,}`, `{} {}`, `{"a":-0}`, `{"a":NaN}`, "\ufeff{}", `{"a":"\ud800"}`, `1`, ``, ` `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON %v, encoding/json %v", got, want)
		}
	})
}

// FuzzHasControl: the word-at-a-time scan finds a byte below 0x20 exactly
// when a byte-at-a-time scan does.
func FuzzHasControl(f *testing.F) {
	f.Add([]byte("abcdefgh\x1fijk"))
	f.Add([]byte("\x7f\x80\xff !~ abcdefgh"))
	f.Fuzz(func(t *testing.T, b []byte) {
		want := false
		for _, c := range b {
			want = want || c < 0x20
		}
		if hasControl(b) != want {
			t.Fatalf("hasControl(%q) = %v", b, !want)
		}
	})
}

// BenchmarkValidJSON measures validJSON against encoding/json.Valid on a
// Filebeat-like document, in the same run: go test -bench ValidJSON
// ./logproto (report the ratio of the two ns/op).
func BenchmarkValidJSON(b *testing.B) {
	doc := []byte(`{"@timestamp":"2026-12-05T01:00:00.000Z","message":"GET /api/orders/42 HTTP/1.1 200 512 \"-\" \"curl/8.5\"","log":{"file":{"path":"/var/log/nginx/access.log"},"offset":123456},"host":{"name":"web-1","ip":["10.0.0.7"]},"agent":{"type":"filebeat","version":"8.17.0"},"fields":{"env":"prod","n":[1,2,3.5,true,null]}}`)
	for _, c := range []struct {
		name string
		fn   func([]byte) bool
	}{{"validJSON", validJSON}, {"encoding-json", json.Valid}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				if !c.fn(doc) {
					b.Fatal("invalid")
				}
			}
		})
	}
}
