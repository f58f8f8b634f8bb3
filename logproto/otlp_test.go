package logproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func field(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// collectorRequest builds an ExportLogsServiceRequest as the OpenTelemetry
// Collector's otlphttp exporter sends it: two resources, the first with two
// scopes.
func collectorRequest() []byte {
	rec := func(body string) []byte {
		r := protowire.AppendTag(nil, 1, protowire.Fixed64Type)
		r = protowire.AppendFixed64(r, 1544712660300000000)
		var any []byte
		any = field(any, 1, []byte(body)) // AnyValue.string_value
		return field(r, 5, any)           // LogRecord.body
	}
	res := func(name string) []byte {
		var kv, v []byte
		v = field(v, 1, []byte(name))
		kv = field(kv, 1, []byte("service.name"))
		kv = field(kv, 2, v)
		return field(nil, 1, kv) // Resource.attributes
	}
	scope := func(name string, recs ...string) []byte {
		s := field(nil, 1, field(nil, 1, []byte(name))) // ScopeLogs.scope{name}
		for _, r := range recs {
			s = field(s, 2, rec(r))
		}
		return field(s, 3, []byte("https://opentelemetry.io/schemas/1.21.0"))
	}
	var rl1, rl2, req []byte
	rl1 = field(rl1, 1, res("shop"))
	rl1 = field(rl1, 2, scope("http", "a", "b"))
	rl1 = field(rl1, 2, scope("db", "c"))
	rl2 = field(rl2, 1, res("cart"))
	rl2 = field(rl2, 2, scope("http", "d"))
	req = field(req, 1, rl1)
	return field(req, 1, rl2)
}

// records lists the bodies of a protobuf request's records with their
// service and scope names, walking it as a reader would.
func records(t *testing.T, b []byte) []string {
	var out []string
	eachField(b, func(_ protowire.Number, _ protowire.Type, rl []byte, _ uint64) error {
		var svc string
		eachField(rl, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
			switch num {
			case 1:
				eachField(v, func(_ protowire.Number, _ protowire.Type, kv []byte, _ uint64) error {
					eachField(kv, func(n protowire.Number, _ protowire.Type, x []byte, _ uint64) error {
						if n == 2 {
							eachField(x, func(_ protowire.Number, _ protowire.Type, s []byte, _ uint64) error { svc = string(s); return nil })
						}
						return nil
					})
					return nil
				})
			case 2:
				var scope string
				eachField(v, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
					switch num {
					case 1:
						eachField(v, func(_ protowire.Number, _ protowire.Type, s []byte, _ uint64) error { scope = string(s); return nil })
					case 2:
						eachField(v, func(n protowire.Number, _ protowire.Type, a []byte, _ uint64) error {
							if n == 5 {
								eachField(a, func(_ protowire.Number, _ protowire.Type, s []byte, _ uint64) error {
									out = append(out, svc+"/"+scope+"/"+string(s))
									return nil
								})
							}
							return nil
						})
					}
					return nil
				})
			}
			return nil
		})
		return nil
	})
	return out
}

func TestOTLPProtobufSplitAndJoin(t *testing.T) {
	req := collectorRequest()
	docs, err := ParseOTLPLogs(req, OTLPProtobuf)
	if err != nil || len(docs) != 4 {
		t.Fatalf("%d docs, %v", len(docs), err)
	}
	want := []string{"shop/http/a", "shop/http/b", "shop/db/c", "cart/http/d"}
	var bodies [][]byte
	for i, d := range docs {
		if got := records(t, d.Body); len(got) != 1 || got[0] != want[i] {
			t.Errorf("doc %d holds %v, want %s with its resource and scope", i, got, want[i])
		}
		if IsOTLPJSON(d.Body) {
			t.Errorf("doc %d taken for JSON", i)
		}
		if cap(d.Body) != len(d.Body) {
			t.Errorf("doc %d: %d bytes in a buffer of %d: its size was not computed right", i, len(d.Body), cap(d.Body))
		}
		bodies = append(bodies, d.Body)
	}
	joined, _ := AppendOTLPLogs(nil, OTLPProtobuf, bodies)
	if got := records(t, joined); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("joined: %v", got)
	}
}

func TestOTLPJSONGolden(t *testing.T) {
	body, _ := os.ReadFile("testdata/otlp/logs.json")
	docs, err := ParseOTLPLogs(body, OTLPJSON)
	if err != nil || len(docs) != 2 {
		t.Fatalf("%d docs, %v", len(docs), err)
	}
	var out []byte
	var bodies [][]byte
	for _, d := range docs {
		if bytes.ContainsAny(d.Body, "\r\n") || !IsOTLPJSON(d.Body) {
			t.Errorf("not one line of JSON: %q", d.Body)
		}
		out = append(append(out, d.Body...), '\n')
		bodies = append(bodies, d.Body)
	}
	golden(t, "otlp/logs.docs.golden", out)
	joined, err := AppendOTLPLogs(nil, OTLPJSON, bodies)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseOTLPLogs(joined, OTLPJSON)
	if err != nil || len(again) != 2 || !bytes.Equal(again[1].Body, docs[1].Body) {
		t.Fatalf("join does not split back: %v", err)
	}
	if string(OTLPSuccess(OTLPJSON)) != "{}" || len(OTLPSuccess(OTLPProtobuf)) != 0 {
		t.Error("success bodies")
	}
}

func TestOTLPRefusals(t *testing.T) {
	for _, c := range []struct{ body, enc, want string }{
		{`{"resourceLogs":[{"scopeLogs":[{"logRecords":[1]}]}]}`, OTLPJSON, "logRecords[0] is not an object"},
		{`secret`, OTLPJSON, "not an OTLP logs request"},
		{"\x0a\x05\x12\x03\x12\x01\xff", OTLPProtobuf, "malformed"},
		{"\x0a\xff", OTLPProtobuf, "malformed"},
	} {
		_, err := ParseOTLPLogs([]byte(c.body), c.enc)
		var pe *Error
		if !errors.As(err, &pe) || pe.Status != 400 || !strings.Contains(pe.Reason, c.want) || strings.Contains(pe.Reason, "secret") {
			t.Errorf("%q: %v", c.body, err)
		}
	}
	if docs, err := ParseOTLPLogs(nil, OTLPProtobuf); err != nil || len(docs) != 0 {
		t.Errorf("empty export: %v %v", docs, err)
	}
	var st struct {
		Code    int
		Message string
	}
	if json.Unmarshal(OTLPStatus(OTLPJSON, 3, "bad"), &st) != nil || st.Code != 3 || st.Message != "bad" {
		t.Errorf("status %+v", st)
	}
}

func TestOTLPPartial(t *testing.T) {
	ps := protowire.AppendTag(nil, 1, protowire.VarintType)
	ps = protowire.AppendVarint(ps, 7)
	ps = field(ps, 2, []byte("too old"))
	if n, msg := ParseOTLPPartial(field(nil, 1, ps), OTLPProtobuf); n != 7 || msg != "too old" {
		t.Errorf("protobuf: %d %q", n, msg)
	}
	if n, msg := ParseOTLPPartial([]byte(`{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"x"}}`), OTLPJSON); n != 3 || msg != "x" {
		t.Errorf("json: %d %q", n, msg)
	}
	if n, _ := ParseOTLPPartial([]byte(`{}`), OTLPJSON); n != 0 {
		t.Errorf("empty: %d", n)
	}
}

// An export of many tiny records under a large resource would take far
// more memory split than whole: past the bound it is refused.
func TestOTLPExpansionBound(t *testing.T) {
	resource := field(nil, 1, field(field(nil, 1, []byte("k")), 2, field(nil, 1, bytes.Repeat([]byte("v"), 10000))))
	var sl []byte
	for range 1000 {
		sl = field(sl, 2, []byte{})
	}
	var rl []byte
	rl = field(rl, 1, resource)
	rl = field(rl, 2, sl)
	req := field(nil, 1, rl) // ~12 KB whole, ~10 MB split
	if _, err := ParseOTLPLogsLimit(req, OTLPProtobuf, MaxExpansion*int64(len(req))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d bytes split 1000 ways: %v", len(req), err)
	}
	if docs, err := ParseOTLPLogsLimit(req, OTLPProtobuf, 20<<20); err != nil || len(docs) != 1000 {
		t.Fatalf("within a larger bound: %d %v", len(docs), err)
	}
}

// BenchmarkParseOTLPProto splits the Collector's request of four records
// (collectorRequest) into one document per record:
//
//	go test -run '^$' -bench ParseOTLPProto ./logproto/
func BenchmarkParseOTLPProto(b *testing.B) {
	req := collectorRequest()
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		if _, err := ParseOTLPLogs(req, OTLPProtobuf); err != nil {
			b.Fatal(err)
		}
	}
}
