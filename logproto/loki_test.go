package logproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// promtailBody builds a snappy-compressed PushRequest as Promtail and
// Grafana Alloy send it.
func promtailBody(streams map[string][]string) []byte {
	var req []byte
	for labels, lines := range streams {
		var st []byte
		st = protowire.AppendTag(st, 1, protowire.BytesType)
		st = protowire.AppendString(st, labels)
		for i, line := range lines {
			var ts, e []byte
			ts = protowire.AppendTag(ts, 1, protowire.VarintType)
			ts = protowire.AppendVarint(ts, 1710000000)
			ts = protowire.AppendTag(ts, 2, protowire.VarintType)
			ts = protowire.AppendVarint(ts, uint64(i))
			e = protowire.AppendTag(e, 1, protowire.BytesType)
			e = protowire.AppendBytes(e, ts)
			e = protowire.AppendTag(e, 2, protowire.BytesType)
			e = protowire.AppendString(e, line)
			st = protowire.AppendTag(st, 2, protowire.BytesType)
			st = protowire.AppendBytes(st, e)
		}
		req = protowire.AppendTag(req, 1, protowire.BytesType)
		req = protowire.AppendBytes(req, st)
	}
	return snappy.Encode(nil, req)
}

func TestLokiGolden(t *testing.T) {
	body, _ := os.ReadFile("testdata/loki/fluentbit.json")
	docs, err := ParseLoki(body, "application/json", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, d := range docs {
		out = append(append(out, d.Body...), '\n')
	}
	golden(t, "loki/fluentbit.docs.golden", out)

	pb := promtailBody(map[string][]string{`{job="promtail", filename="/var/log/app.log", q="a\"b"}`: {"line one", "line two"}})
	docs, err = ParseLoki(pb, "application/x-protobuf", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	out = out[:0]
	for _, d := range docs {
		out = append(append(out, d.Body...), '\n')
	}
	golden(t, "loki/promtail.docs.golden", out)

	// Delivery groups the entries into streams again.
	var stored []LokiDoc
	for _, d := range docs {
		stored = append(stored, LokiDoc{Body: d.Body, At: time.Unix(0, 0), Entry: true})
	}
	// A document from another route, even one shaped like an entry, is a line.
	stored = append(stored, LokiDoc{Body: []byte(`{"labels":{"a":"b"},"ts":"1","line":"x"}`), At: time.Unix(1710000001, 0)})
	golden(t, "loki/push.golden", append(AppendLokiPush(nil, stored), '\n'))
	again, err := ParseLoki(AppendLokiPush(nil, stored), "application/json", 1<<20)
	if err != nil || len(again) != 3 || !bytes.Equal(again[0].Body, docs[0].Body) {
		t.Fatalf("push does not parse back: %v", err)
	}
}

func TestLokiRefusals(t *testing.T) {
	for _, c := range []struct{ body, ct, want string }{
		{`{"streams":[{"stream":{},"values":[["1","x"]]}]}`, "application/json", "at least one label pair"},
		{`{"streams":[{"stream":{"a":"b"},"values":[[1,"x"]]}]}`, "application/json", "Unix nanoseconds"},
		{`{"streams":[{"stream":{"a":"b"},"values":[["1"]]}]}`, "application/json", "[timestamp, line]"},
		{`{"streams":[{"stream":{"a":"b"},"values":[["1","x",{"k":1}]]}]}`, "application/json", "structured metadata"},
		{`{"streams":[]}`, "application/json", "no entry"},
		{`secret{`, "application/json", "not a Loki push request"},
		{`secret`, "application/x-protobuf", "snappy"},
		{string(promtailBody(map[string][]string{`{job=secret}`: {"x"}})), "application/x-protobuf", "not quoted"},
		{`x`, "text/plain", "expected application/json"},
	} {
		_, err := ParseLoki([]byte(c.body), c.ct, 1<<20)
		var pe *Error
		if !errors.As(err, &pe) || !strings.Contains(pe.Reason, c.want) || strings.Contains(pe.Reason, "secret") {
			t.Errorf("%q: %v", c.body, err)
		}
	}
	big := promtailBody(map[string][]string{`{a="b"}`: {strings.Repeat("x", 4096)}})
	if _, err := ParseLoki(big, "application/x-protobuf", 1024); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the limit: %v", err)
	}
}

func TestParseLabels(t *testing.T) {
	got, err := parseLabels(`{ a="1", b = "x\"y" ,c="" }`)
	if err != nil || len(got) != 3 || got["b"] != `x"y` || got["c"] != "" {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{`a="1"`, `{a=1}`, `{a="1" b="2"}`, `{="1"}`, `{a="1}`} {
		if _, err := parseLabels(bad); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
	if b, _ := json.Marshal(got); string(b) != `{"a":"1","b":"x\"y","c":""}` {
		t.Errorf("%s", b)
	}
}

// Many tiny entries under large labels would take far more memory split
// than whole: past MaxExpansion times the limit they are refused.
func TestLokiExpansionBound(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"streams":[{"stream":{"big":"` + strings.Repeat("x", 10000) + `"},"values":[`)
	for i := range 1000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`["1",""]`)
	}
	b.WriteString("]}]}")
	body := []byte(b.String())
	if _, err := ParseLoki(body, "application/json", int64(len(body))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d bytes split 1000 ways: %v", len(body), err)
	}
	if docs, err := ParseLoki(body, "application/json", 1<<20); err != nil || len(docs) != 1000 {
		t.Fatalf("within a larger limit: %d %v", len(docs), err)
	}
}
