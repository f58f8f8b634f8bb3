// Command gen-v1 wrote v1-logs-datadir.tar.gz and v1-logs-messages.json
// (TestReadsRecordsOfVersion1) with the build of main at 3a04a96, the
// last that wrote record version 1: run from a module that replaces
// github.com/sluice-proxy/sluice with a checkout of that commit, as
// `go run . DIR messages.json`, then tar DIR. It stores documents of every
// log protocol and plain requests, and writes the messages as that build
// reads them back.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/proxy"
	"github.com/sluice-proxy/sluice/store"
)

const policy = `
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
  - name: plain
    match: { path: /plain }
    idempotency_header: Idempotency-Key
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
  - name: logs
    match: { path: / }
    protocol: elasticsearch
    targets: [{ name: store, url: "http://127.0.0.1:1" }]
`

type msg struct {
	ID         string
	EnqueuedAt int64
	Method     string
	URI        string
	Header     []store.Header
	Key        string
	Body       []byte
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	dir := os.Args[1]
	pol, err := policies.Parse("gen.yaml", []byte(policy))
	must(err)
	st, err := buffer.Open(buffer.Config{Dir: dir})
	must(err)
	qs := map[string]store.Queue{}
	for _, r := range pol.Routes {
		q, err := st.Queue(r.Name, []string{"store"})
		must(err)
		qs[r.Name] = q
	}
	s, err := proxy.New(proxy.Config{Policy: pol, Queues: qs})
	must(err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	go s.Serve(ln)
	base := "http://" + ln.Addr().String()
	post := func(path, ctype, body string, hdr ...string) {
		req, _ := http.NewRequest("POST", base+path, bytes.NewBufferString(body))
		req.Header.Set("Content-Type", ctype)
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		must(err)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			panic(fmt.Sprintf("%s: %d", path, resp.StatusCode))
		}
	}
	post("/app/_bulk?pipeline=p1", "application/x-ndjson",
		"{\"index\":{\"_index\":\"system\"}}\n{\"msg\":\"1\"}\n{\"create\":{\"_id\":\"own\"}}\n{\"msg\":\"2\"}\n{\"create\":{}}\n{\"msg\":\"3\"}\n{\"index\":{\"_index\":\"x\",\"_id\":\"7\",\"routing\":\"r\"}}\n{\"msg\":\"4\",\"n\":[1,2]}\n")
	post("/_bulk", "application/json", "{\"create\":{\"_index\":\"logs\"}}\n{\"@timestamp\":\"2026-12-05T01:00:00.000Z\",\"msg\":\"5\"}\n")
	post("/services/collector/event", "application/json",
		`{"event":"one","host":"h1","sourcetype":"st"}{"event":{"k":"two"},"time":1700000000.5,"fields":{"a":"b"}}`,
		"X-Splunk-Request-Channel", "0aeeac95-ac74-4aa9-b30d-6c4c0ac581ba")
	post("/services/collector/raw?host=h2&sourcetype=raw", "text/plain", "line one\nline two\n")
	post("/loki/api/v1/push", "application/json",
		`{"streams":[{"stream":{"app":"web","env":"prod"},"values":[["1700000000000000000","first"],["1700000000000000001","second",{"trace_id":"t1"}]]}]}`)
	post("/v1/logs", "application/json",
		`{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},"scopeLogs":[{"scope":{"name":"lib"},"logRecords":[{"timeUnixNano":"1700000000000000000","body":{"stringValue":"otlp one"}},{"body":{"stringValue":"otlp two"},"severityText":"WARN"}]}]}]}`)
	post("/lines", "application/x-ndjson", "{\"a\":1}\n{\"b\":\"two\"}\n")
	post("/plain/orders?x=1", "application/json", `{"order":42}`, "Idempotency-Key", "k-1", "X-Customer-Id", "c-42", "User-Agent", "gen/1")
	post("/plain/gz", "application/octet-stream", "\x1f\x8b binary \x00\xff", "Content-Encoding", "gzip")

	s.Shutdown(context.Background())
	must(st.Close())

	st, err = buffer.Open(buffer.Config{Dir: dir})
	must(err)
	out := map[string][]msg{}
	for _, r := range pol.Routes {
		q, err := st.Queue(r.Name, []string{"store"})
		must(err)
		c, err := q.Consumer("store")
		must(err)
		ds, err := c.Fetch(1000, time.Now())
		must(err)
		sort.Slice(ds, func(i, j int) bool { return ds[i].Seq < ds[j].Seq })
		for _, d := range ds {
			out[r.Name] = append(out[r.Name], msg{ID: d.ID.String(), EnqueuedAt: d.EnqueuedAt.UnixNano(), Method: d.Method, URI: d.URI,
				Header: d.Header, Key: d.IdempotencyKey, Body: d.Body})
		}
		for _, d := range ds {
			c.Release(d)
		}
	}
	must(st.Close())
	b, err := json.MarshalIndent(out, "", " ")
	must(err)
	must(os.WriteFile(os.Args[2], append(b, '\n'), 0o644))
}
