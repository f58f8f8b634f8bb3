package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
)

// TestDeliveryCallbacksAndCapture runs a node in this process: a producer
// names a callback URL; the target answers 201 with an order number; the
// status API shows the captured answer and an ETA was given at once; the
// callback arrives; the target never sees the callback header.
func TestDeliveryCallbacksAndCapture(t *testing.T) {
	down := testutil.StartUpstream(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetStatusCode(201)
		ctx.Response.Header.Set("Location", "/orders/SO-7")
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"order_no":"SO-7"}`)
	})
	hooks := testutil.StartUpstream(t, testutil.Answer(204, ""))

	pol, err := policies.Parse("delivery.yaml", fmt.Appendf(nil, `
storage: { dir: %s }
callbacks: { allow: ["http://%s/hooks/"] }
routes:
  - name: orders
    match: { path: /api/orders }
    max_wait: 1h
    callback_header: X-Sluice-Callback
    targets:
      - { name: inv, url: "http://%s", rate: 100/s, capture_response: { max_bytes: 1KiB } }
`, filepath.Join(t.TempDir(), "data"), hooks.Addr, down.Addr))
	if err != nil {
		t.Fatal(err)
	}
	n, addr := runNode(t, pol)
	t.Cleanup(func() { n.stop(10 * time.Second) })
	base := "http://" + addr

	post := func(cb string) *fasthttp.Response {
		req, resp := fasthttp.AcquireRequest(), &fasthttp.Response{}
		defer fasthttp.ReleaseRequest(req)
		req.Header.SetMethod("POST")
		req.SetRequestURI(base + "/api/orders")
		req.Header.Set("X-Sluice-Callback", cb)
		req.SetBodyString(`{"sku":"A1"}`)
		if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := post("http://evil.example/hooks/"); resp.StatusCode() != 400 {
		t.Fatalf("disallowed callback: %d %s", resp.StatusCode(), resp.Body())
	}
	resp := post(hooks.URL + "/hooks/orders?token=t")
	var acc struct {
		ID        string `json:"id"`
		StatusURL string `json:"status_url"`
		Targets   []struct {
			Target string     `json:"target"`
			ETA    *time.Time `json:"eta"`
		} `json:"targets"`
	}
	if err := json.Unmarshal(resp.Body(), &acc); err != nil || resp.StatusCode() != 202 || len(acc.Targets) != 1 ||
		acc.Targets[0].Target != "inv" || acc.Targets[0].ETA == nil {
		t.Fatalf("202: %d %s: %v", resp.StatusCode(), resp.Body(), err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for len(hooks.Requests()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no callback within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var ev map[string]any
	json.Unmarshal(hooks.Requests()[0].Body, &ev)
	var leaked []string
	for _, r := range down.Requests() {
		if v := r.Header.Get("X-Sluice-Callback"); v != "" {
			leaked = append(leaked, v)
		}
	}
	if ev["id"] != acc.ID || ev["route"] != "orders" || ev["target"] != "inv" || ev["status"] != "delivered" ||
		ev["status_code"] != 201.0 || ev["attempts"] != 1.0 || ev["at"] == nil || len(leaked) != 0 {
		t.Errorf("callback %v; leaked to the target: %v", ev, leaked)
	}

	status, body, err := fasthttp.Get(nil, base+acc.StatusURL)
	if err != nil || status != 200 {
		t.Fatalf("status %d %s: %v", status, body, err)
	}
	var ms struct {
		Targets []struct {
			Status   string `json:"status"`
			Response struct {
				Status  int               `json:"status"`
				Headers map[string]string `json:"headers"`
				Body    string            `json:"body"`
				Omitted bool              `json:"body_omitted"`
			} `json:"response"`
		} `json:"targets"`
	}
	if err := json.Unmarshal(body, &ms); err != nil || len(ms.Targets) != 1 {
		t.Fatalf("status %s: %v", body, err)
	}
	// The captured body is shown only with the admin token: here, none.
	r := ms.Targets[0].Response
	if ms.Targets[0].Status != "delivered" || r.Status != 201 || r.Headers["Location"] != "/orders/SO-7" || r.Body != "" || !r.Omitted {
		t.Errorf("status %s", body)
	}
}
