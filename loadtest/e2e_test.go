package loadtest

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// The stages wired as `sluice loadtest` will wire them, with the acker
// standing in for sluice: it acknowledges, then delivers each request to
// the downstream in the background, retrying 429 and 503.
func TestEndToEnd(t *testing.T) {
	d := startDownstream(t, DownstreamConfig{Rate: 400, Burst: 10, FailRate: 0.1, Seed: 1})
	var deliveries sync.WaitGroup
	defer deliveries.Wait()
	a := startAcker(t, &acker{forward: func(id string, req *fasthttp.Request) {
		body := append([]byte(nil), req.Body()...)
		enqueued := time.Now().Format(time.RFC3339Nano)
		deliveries.Go(func() {
			for attempt := 1; attempt <= 20; attempt++ {
				out, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				out.SetRequestURI(d.URL() + "/api/orders")
				out.Header.SetMethod(fasthttp.MethodPost)
				out.Header.Set("X-Sluice-Id", id)
				out.Header.Set("X-Sluice-Attempt", string(fasthttp.AppendUint(nil, attempt)))
				out.Header.Set("X-Sluice-Enqueued-At", enqueued)
				out.SetBody(body)
				err := testClient.DoTimeout(out, resp, time.Second)
				ok := err == nil && resp.StatusCode() == 200
				fasthttp.ReleaseRequest(out)
				fasthttp.ReleaseResponse(resp)
				if ok {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}})

	cfg := GenConfig{URL: a.URL, Pacer: ConstantPacer{PerSecond: 300}, Duration: 500 * time.Millisecond}
	rec := NewRecorder()
	if err := Generate(context.Background(), cfg, rec); err != nil {
		t.Fatal(err)
	}
	if err := WaitDrained(context.Background(), rec.AcceptedIDs(), d, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ds := d.Stats()
	v := Verify(rec.Accepted(), d.Arrivals(), ds.Arrivals.Counts)
	r := NewReport(cfg, rec.Snapshot(), ds, v)

	if v.Accepted != 150 || v.Delivered != 150 || v.Lost != 0 || v.Duplicates != 0 || v.Unexpected != 0 {
		t.Errorf("Verdict %+v", v)
	}
	if v.EndToEnd.Count != 150 || v.QueueDelay.Count != 150 || v.DrainTime <= 0 {
		t.Errorf("EndToEnd %+v QueueDelay %+v DrainTime %v", v.EndToEnd, v.QueueDelay, v.DrainTime)
	}
	if p := r.Problems(); len(p) != 0 {
		t.Errorf("Problems: %v", p)
	}
	if len(r.Series) == 0 {
		t.Error("no series")
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil || !strings.Contains(text.String(), "verdict          PASS") {
		t.Errorf("WriteText: %v\n%s", err, text.String())
	}
	t.Logf("\n%s", text.String())
}
