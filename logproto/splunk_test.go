package logproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHECGolden parses event bodies in the shapes Fluent Bit's splunk
// output, the OpenTelemetry Collector's splunk_hec exporter and Vector's
// splunk_hec_logs sink send, and compares the stored documents with golden
// files (one per line).
func TestHECGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/hec/*.json")
	if len(files) < 3 {
		t.Fatalf("found %d bodies", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			body, _ := os.ReadFile(f)
			docs, err := ParseHEC(body)
			if err != nil {
				t.Fatal(err)
			}
			var out []byte
			for _, d := range docs {
				if bytes.ContainsAny(d.Body, "\r\n") || !json.Valid(d.Body) {
					t.Errorf("not one line of JSON: %q", d.Body)
				}
				out = append(append(out, d.Body...), '\n')
			}
			golden(t, "hec/"+name+".docs.golden", out)
		})
	}
	if got := string(HECReply("Success", HECSuccess, -1)); got != "{\"text\":\"Success\",\"code\":0}\n" {
		t.Errorf("success reply %q", got)
	}
}

func TestHECRefusals(t *testing.T) {
	for _, c := range []struct {
		body       string
		code, evnt int
	}{
		{`{"event":"a"}{"event":"b"}secret`, HECInvalidFormat, 2},
		{`{"event":"a"} [1]`, HECInvalidFormat, 1},
		{`{"event":"a"}{"time":1}`, HECEventRequired, 1},
		{`{"event":""}`, HECEventBlank, 0},
		{`{"event":null}`, HECEventRequired, 0},
		{"  \n", HECNoData, -1},
	} {
		_, err := ParseHEC([]byte(c.body))
		var he *HECError
		if !errors.As(err, &he) || he.Status != 400 || he.Code != c.code || he.Event != c.evnt {
			t.Errorf("%q: %v", c.body, err)
			continue
		}
		if b := he.Body(); !json.Valid(b) || bytes.Contains(b, []byte("secret")) {
			t.Errorf("%q: body %s", c.body, b)
		}
	}
}

func TestHECRaw(t *testing.T) {
	docs, err := ParseHECRaw([]byte("first line\n\nsecond \"quoted\"\r\n"), map[string]string{"sourcetype": "app", "host": "h"})
	if err != nil || len(docs) != 2 {
		t.Fatalf("%v %d", err, len(docs))
	}
	if got := string(docs[1].Body); got != `{"host":"h","sourcetype":"app","event":"second \"quoted\""}` {
		t.Errorf("%s", got)
	}
	for path, want := range map[string]string{"/services/collector": "event", "/services/collector/event/1.0": "event", "/services/collector/raw": "raw", "/services/collector/health": "health", "/x": ""} {
		if got := HECEndpoint(path); got != want {
			t.Errorf("%s: %q", path, got)
		}
	}
}

// Raw events repeat the query's metadata: many short lines under a long
// sourcetype are refused past the bound instead of taking 1000x memory.
func TestHECRawExpansionBound(t *testing.T) {
	body := []byte(strings.Repeat("a\n", 100000))
	if _, err := ParseHECRaw(body, map[string]string{"sourcetype": strings.Repeat("s", 8000)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%v", err)
	}
	if docs, err := ParseHECRaw(body, map[string]string{"sourcetype": "app"}); err != nil || len(docs) != 100000 {
		t.Fatalf("%d %v", len(docs), err)
	}
}
