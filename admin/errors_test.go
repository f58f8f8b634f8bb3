package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/store"
)

// failingExport lists one chunk of rows, then fails.
type failingExport struct{ fakeMessages }

func (f failingExport) List(route string, flt store.Filter, after uint64, limit int, fn func(*store.Row) bool) (uint64, bool, error) {
	if after > 0 {
		return after, false, errors.New("disk on fire")
	}
	return f.fakeMessages.List(route, flt, after, limit, fn)
}

// errorShape checks that data is {"error": {"code": code, "message": ...}}
// with no keys but those and the extra ones named.
func errorShape(t *testing.T, what string, data []byte, code string, extra ...string) {
	t.Helper()
	var body map[string]map[string]any
	if err := json.Unmarshal(data, &body); err != nil || len(body) != 1 || body["error"] == nil {
		t.Errorf("%s: body %s, want {\"error\": {...}}", what, data)
		return
	}
	e := body["error"]
	if e["code"] != code {
		t.Errorf("%s: code %v, want %s (%s)", what, e["code"], code, data)
	}
	if m, _ := e["message"].(string); m == "" {
		t.Errorf("%s: no message (%s)", what, data)
	}
	for k := range e {
		if k != "code" && k != "message" && !slices.Contains(extra, k) {
			t.Errorf("%s: key %q in the error (%s)", what, k, data)
		}
	}
}

// Every error of the admin API has one shape, {"error": {"code",
// "message"}} (with "param" for a bad query parameter, "errors" for a
// refused reload), and a call this server cannot serve is 501
// not_supported, whether the part is absent or its storage engine lacks
// it; an export that fails after its first row ends with a line of the
// same shape.
func TestErrorsOneShape(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"nothing configured", Config{Token: token, Node: f.node, Controls: f.controls, Metrics: NewMetrics(nil), Logger: quiet}},
		{"an engine without them", Config{Token: token, Node: f.node, Controls: f.controls, Metrics: NewMetrics(nil), Logger: quiet, Messages: unsupportedMessages{}}},
	} {
		s, err := New(c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		for _, e := range []struct{ method, path string }{
			{"GET", "/v1/routes/orders/messages"},
			{"GET", "/v1/routes/orders/counts"},
			{"POST", "/v1/routes/orders/targets/inv/replay"},
			{"GET", "/v1/routes/orders/targets/inv/dead"},
			{"GET", "/v1/routes/orders/targets/inv/dead/id-0001"},
			{"POST", "/v1/routes/orders/targets/inv/dead/replay"},
			{"POST", "/v1/routes/orders/targets/inv/dead/purge"},
			{"POST", "/v1/reload"},
		} {
			if c.cfg.Messages != nil && !strings.Contains(e.path, "/messages") && !strings.Contains(e.path, "/counts") && !strings.HasSuffix(e.path, "/inv/replay") {
				continue
			}
			body := `{"all":true}`
			if strings.HasSuffix(e.path, "/inv/replay") {
				body = `{"state":"dead"}`
			}
			resp, data := authCall(t, e.method, srv.URL+e.path, body)
			what := fmt.Sprintf("%s: %s %s", c.name, e.method, e.path)
			if resp.StatusCode != http.StatusNotImplemented {
				t.Errorf("%s: %d, want 501", what, resp.StatusCode)
			}
			errorShape(t, what, data, "not_supported")
		}
		srv.Close()
	}

	code, body := f.call(t, "GET", "/v1/routes/orders/targets/inv/dead?class=nope", token, "")
	data, _ := json.Marshal(body)
	if code != http.StatusBadRequest {
		t.Errorf("a bad parameter: %d", code)
	}
	errorShape(t, "a bad parameter", data, "bad_request", "param")
	code, body = f.call(t, "POST", "/v1/reload", token, "")
	data, _ = json.Marshal(body)
	if code != http.StatusUnprocessableEntity {
		t.Errorf("a refused reload: %d", code)
	}
	errorShape(t, "a refused reload", data, "invalid_policy", "errors")

	resp := getExport(t, Config{Token: token, Node: f.node, Controls: f.controls, Metrics: NewMetrics(nil), Logger: quiet, Messages: failingExport{fakeMessages{2 * exportChunk}}})
	sc := bufio.NewScanner(resp.Body)
	var last string
	rows := 0
	for sc.Scan() {
		if last = sc.Text(); strings.HasPrefix(last, `{"id"`) {
			rows++
		}
	}
	if rows != exportChunk {
		t.Errorf("the export sent %d rows before failing, want %d", rows, exportChunk)
	}
	errorShape(t, "an export's last line", []byte(last), "store_error")
}

// unavailableMessages fails every listing as a store does whose disk or
// NATS server did not answer just now (store.ErrIO).
type unavailableMessages struct{ fakeMessages }

func (unavailableMessages) List(string, store.Filter, uint64, int, func(*store.Row) bool) (uint64, bool, error) {
	return 0, false, fmt.Errorf("%w: route %q: read seq 1: nats: no responders available for request", store.ErrIO, "orders")
}

// A listing the store fails with an I/O error (a NATS stream electing its
// leader, a disk that failed a read) is a 503 with Retry-After, which a
// client may retry, not a 500; any other failure stays a 500 store_error.
func TestListingStoreUnavailableIs503(t *testing.T) {
	f := newFixture(t)
	s, err := New(Config{Token: token, Node: f.node, Controls: f.controls, Metrics: NewMetrics(nil), Logger: quiet, Messages: unavailableMessages{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	resp, data := authCall(t, "GET", srv.URL+"/v1/routes/orders/messages", "")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("status %d, Retry-After %q; want 503 and 1 (%s)", resp.StatusCode, resp.Header.Get("Retry-After"), data)
	}
	errorShape(t, "an unavailable store", data, "store_unavailable")
}

// authCall makes one call with the test token and returns the answer and
// its body, read and closed.
func authCall(t *testing.T, method, url, body string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, data
}
