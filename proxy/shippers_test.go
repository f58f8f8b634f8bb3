package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden replies in testdata/shippers")

// shipperPolicy serves every log protocol, as the shippers of
// testdata/shippers expect to find them.
const shipperPolicy = `
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
    hec_tokens: ["00000000-0000-0000-0000-000000000000"]
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: lines
    match: { path: /lines }
    protocol: ndjson
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: logs
    match: { path: / }
    protocol: elasticsearch
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`

// TestShipperGolden replays the requests of the shippers not packaged in
// Debian (Fluent Bit, Vector, Filebeat, Logstash, the OpenTelemetry
// Collector), written from their documentation and output sources into
// testdata/shippers/*.req (the request line, headers, a blank line, the
// body; a body whose Content-Encoding is gzip is compressed here), in file
// order against one server, and compares each reply (status, the headers
// the shippers read, the body with the took time and message ids masked)
// with its .reply file (go test -update rewrites them). What each shipper
// reads of it: Elasticsearch outputs a 200 with errors:false and one item
// per action (Filebeat and Logstash also X-Elastic-Product and the version
// on GET /), HEC clients code 0 (Vector with acknowledgements, its ackId,
// then true for it on the ack call), Loki clients a 204, the OTLP exporter
// a 200 with an ExportLogsServiceResponse in its encoding.
func TestShipperGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/shippers/*.req")
	if len(files) < 10 {
		t.Fatalf("found %d golden requests", len(files))
	}
	base, s := policyServer(t, shipperPolicy)
	seen := map[string]bool{}
	for _, f := range files { // Glob sorts: a shipper's calls run in their order
		name := strings.TrimSuffix(filepath.Base(f), ".req")
		seen[strings.SplitN(name, "-", 2)[0]] = true
		raw, err := os.ReadFile(f)
		must(t, err)
		method, path, hdr, body := parseGoldenRequest(t, raw)
		if hdr["Content-Encoding"] == "gzip" {
			var zb bytes.Buffer
			zw := gzip.NewWriter(&zb)
			zw.Write(body)
			zw.Close()
			body = zb.Bytes()
		}
		resp := do(t, method, base+path, string(body), hdr)
		if resp.StatusCode() < 200 || resp.StatusCode() > 299 {
			t.Errorf("%s: %d %s", name, resp.StatusCode(), resp.Body())
		}
		var got bytes.Buffer
		fmt.Fprintf(&got, "%d\n", resp.StatusCode())
		for _, h := range []string{"Content-Type", "X-Elastic-Product"} {
			if v := resp.Header.Peek(h); len(v) > 0 {
				fmt.Fprintf(&got, "%s: %s\n", h, v)
			}
		}
		got.WriteString("\n")
		got.Write(maskReply(resp.Body()))
		golden := strings.TrimSuffix(f, ".req") + ".reply"
		if *updateGolden {
			must(t, os.WriteFile(golden, got.Bytes(), 0o644))
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%s: %v (go test -run TestShipperGolden -update writes it)", name, err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: reply differs from %s\n--- got\n%s\n--- want\n%s", name, golden, got.Bytes(), want)
		}
	}
	for _, sh := range []string{"fluentbit", "vector", "filebeat", "logstash", "otelcol"} {
		if !seen[sh] {
			t.Errorf("no golden request of %s", sh)
		}
	}
	// Every document of every request was stored, one message each:
	// Elasticsearch filebeat 2, fluentbit 1, logstash 2, vector 1; HEC
	// fluentbit 2, otelcol 2, vector 1; Loki fluentbit 3; OTLP 2 records.
	for route, want := range map[string]uint64{"logs": 2 + 1 + 2 + 1, "hec": 2 + 2 + 1, "loki": 3, "otlp": 2} {
		if n := s.testQueue(route).Stats().Appended; n != want {
			t.Errorf("route %s: %d messages stored, want %d", route, n, want)
		}
	}
}

func parseGoldenRequest(t *testing.T, raw []byte) (method, path string, hdr map[string]string, body []byte) {
	t.Helper()
	head, body, ok := bytes.Cut(raw, []byte("\n\n"))
	if !ok {
		t.Fatalf("no blank line after the headers")
	}
	sc := bufio.NewScanner(bytes.NewReader(head))
	sc.Scan()
	method, path, _ = strings.Cut(sc.Text(), " ")
	hdr = map[string]string{}
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		hdr[k] = strings.TrimSpace(v)
	}
	return method, path, hdr, body
}

var (
	maskTook = regexp.MustCompile(`"took":\d+`)
	maskID   = regexp.MustCompile(`"_id":"[0-9a-z]{26}"`)
)

// maskReply hides what changes from run to run: the took time and the
// message ids given as _id.
func maskReply(b []byte) []byte {
	b = maskTook.ReplaceAll(b, []byte(`"took":0`))
	return maskID.ReplaceAll(b, []byte(`"_id":"<message id>"`))
}
