package drain

import (
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/testutil"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

// bigBody streams n bytes of 'x' as the answer, chunked, in 64 KiB chunks.
func bigBody(ctx *fasthttp.RequestCtx, n int) {
	ctx.SetContentType("text/plain")
	ctx.Response.SetBodyStream(&xBody{left: n}, -1)
}

// xChunk is every chunk of a bigBody, shared.
var xChunk = []byte(strings.Repeat("x", 64<<10))

// xBody is a bigBody's n bytes of 'x'. Its WriteTo hands fasthttp the
// shared xChunk, which it frames as a chunk and writes to the connection
// as it is: the test's downstream allocates nothing per chunk, so that
// TestLargeResponsesDiscarded's heap peak is the drainer's. A body
// stream writer (SetBodyStreamWriter) goes through an in-memory pipe
// whose buffers come from a sync.Pool, which the race detector empties
// at random: 150 MB of garbage a run, up to 40 MB of it in the heap
// before a collection caught up, more on a loaded machine.
type xBody struct{ left int }

func (b *xBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), b.left)], xChunk)
	b.left -= n
	return n, nil
}

func (b *xBody) WriteTo(w io.Writer) (int64, error) {
	var sent int64
	for b.left > 0 {
		n, err := w.Write(xChunk[:min(len(xChunk), b.left)])
		b.left -= n
		sent += int64(n)
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// SupportsBodyWriteTo tells fasthttp that WriteTo may stand for Read.
func (b *xBody) SupportsBodyWriteTo() bool { return true }

// heapPeak samples the live heap every 2ms until stop is called and returns
// the highest HeapInuse seen above the level at the start.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var m runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > base && m.HeapInuse-base > peak.Load() {
				peak.Store(m.HeapInuse - base)
			}
		}
	})
	return func() uint64 { close(done); wg.Wait(); return peak.Load() }
}

// TestLargeResponsesDiscarded: a downstream answering every delivery with a
// 48 MiB body (chunked, and with a Content-Length below the old 16 MiB read
// limit) at concurrency 4. The drainer reads the status line and headers,
// captures capture_response.max_bytes of the body when set, and discards the
// rest as it streams: the heap grows by far less than one body per attempt,
// and every message is delivered with its status and captured prefix.
func TestLargeResponsesDiscarded(t *testing.T) {
	const chunked, sized = 48 << 20, 12 << 20
	sizedBody := []byte(strings.Repeat("y", sized)) // shared: the test's downstream should cost little heap
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		if strings.Contains(h.uri, "x=1") || strings.Contains(h.uri, "x=3") {
			ctx.SetStatusCode(201)
			ctx.Response.SetBodyRaw(sizedBody) // Content-Length, under 16 MiB
			return
		}
		ctx.SetStatusCode(200)
		bigBody(ctx, chunked)
	})
	_, q, _ := newQueue(t, "a", "b")
	msgs := appendN(t, q, 8, order)
	ta := testTarget("a", ds.url)
	ta.Concurrency, ta.Timeout = 4, 20*time.Second
	tb := ta
	tb.Name = "b"
	tb.CaptureResponse = &policies.Capture{MaxBytes: 100}
	stop := heapPeak()
	da, _ := startDrainer(t, Config{Target: ta}, consumer(t, q, "a"))
	db, _ := startDrainer(t, Config{Target: tb}, consumer(t, q, "b"))
	waitFor(t, 60*time.Second, "deliveries", func() bool {
		return da.Stats().Delivered == 8 && db.Stats().Delivered == 8
	})
	peak := stop()
	t.Logf("heap peak above start: %.1f MiB (8 concurrent attempts, bodies of 48 and 12 MiB)", float64(peak)/(1<<20))
	// Before: each attempt buffered up to 16 MiB (and a 12 MiB body whole,
	// grown by doubling): well over 100 MiB at 8 attempts in flight.
	if peak > 24<<20 {
		t.Errorf("heap grew by %d MiB while draining large answers; want under 24 MiB", peak>>20)
	}
	for _, m := range msgs {
		st := status(t, q, m.ID, "b")
		r := st.Response
		if st.Phase != buffer.Delivered || r == nil {
			t.Fatalf("%s: b: state %+v", m.ID, st.State)
		}
		want := strings.Repeat("x", 100)
		if r.Status == 201 {
			want = strings.Repeat("y", 100)
		}
		if string(r.Body) != want || !r.Truncated {
			t.Errorf("%s: b: captured %d bytes (truncated %v), want the first 100", m.ID, len(r.Body), r.Truncated)
		}
		if st := status(t, q, m.ID, "a"); st.Phase != buffer.Delivered || st.Response != nil {
			t.Errorf("%s: a: state %+v", m.ID, st.State)
		}
	}
}

// TestTimeoutClosesConnection: a downstream that takes requests and never
// answers (silent), or answers 200 and never ends the body (trickle). Each
// attempt closes its connection at the timeout, so the downstream sees the
// client gone then: no request stays open at the downstream much past the
// attempt's timeout.
func TestTimeoutClosesConnection(t *testing.T) {
	for _, mode := range []string{"silent", "trickle"} {
		t.Run(mode, func(t *testing.T) { testTimeoutCloses(t, mode == "trickle") })
	}
}

func testTimeoutCloses(t *testing.T, trickle bool) {
	var total, late atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		total.Add(1)
		io.Copy(io.Discard, r.Body)
		if trickle {
			w.WriteHeader(200)
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
		}
		select { // a handler that notices its client left
		case <-r.Context().Done():
		case <-time.After(time.Second):
			late.Add(1) // still connected 1s after the 150ms timeout
			<-r.Context().Done()
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	_, q, _ := newQueue(t, "a")
	appendN(t, q, 8, order)
	ta := testTarget("a", "http://"+ln.Addr().String())
	ta.Concurrency, ta.Timeout = 4, 150*ms
	ta.Retry.MaxAttempts = 1000
	d, _ := startDrainer(t, Config{Target: ta}, consumer(t, q, "a"))
	want := uint64(24)
	if trickle {
		want = 8 // each is delivered (200), after its timeout
	}
	waitFor(t, 20*time.Second, "timed-out attempts", func() bool { return d.Stats().Attempts >= want })
	time.Sleep(1200 * ms) // let the last attempts' handlers see their end, or count as late
	if n := late.Load(); n > 0 {
		t.Errorf("%d of %d requests were still connected at the downstream 1s after their attempt timed out (150ms)", n, total.Load())
	}
	// An answer whose status line and headers came is the outcome, though
	// its body stalled: each message delivered once, none sent again.
	if st := d.Stats(); trickle && (st.Delivered != 8 || st.Attempts != 8) {
		t.Errorf("trickle: %d delivered in %d attempts, want 8 in 8", st.Delivered, st.Attempts)
	}
}

// TestAnswersKeepConnections: an answer read to its end (sized or chunked,
// captured or not) leaves its connection in the pool: 200 deliveries at
// concurrency 4 use a handful of connections, not one each.
func TestAnswersKeepConnections(t *testing.T) {
	var conns atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(strings.Repeat("z", 10<<10))
	ds := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if strings.Contains(string(ctx.RequestURI()), "x=1") {
				bigBody(ctx, 100<<10) // chunked
				return
			}
			ctx.Response.SetBodyRaw(body)
		},
		ConnState: func(_ net.Conn, s fasthttp.ConnState) {
			if s == fasthttp.StateNew {
				conns.Add(1)
			}
		},
	}
	testutil.ServeOn(t, ln, ds)
	_, q, _ := newQueue(t, "a", "b")
	appendN(t, q, 100, order)
	ta := testTarget("a", "http://"+ln.Addr().String())
	ta.Concurrency = 2
	tb := ta
	tb.Name = "b"
	tb.CaptureResponse = &policies.Capture{MaxBytes: 16}
	da, _ := startDrainer(t, Config{Target: ta}, consumer(t, q, "a"))
	db, _ := startDrainer(t, Config{Target: tb}, consumer(t, q, "b"))
	waitFor(t, 20*time.Second, "deliveries", func() bool { return da.Stats().Delivered == 100 && db.Stats().Delivered == 100 })
	t.Logf("%d connections", conns.Load())
	if n := conns.Load(); n > 8 {
		t.Errorf("%d connections for 200 deliveries at concurrency 2+2: answers read to the end did not go back to the pool", n)
	}
}

// TestForwardReadsAnswersWhole: Forward hands the client the target's
// answer whole (small, over 64 KiB sized or chunked), and one over 16 MiB
// as too large, with no partial body.
func TestForwardReadsAnswersWhole(t *testing.T) {
	sized := []byte(strings.Repeat("s", 1<<20))
	huge := []byte(strings.Repeat("h", maxResponseBody+1))
	ds := newDownstream(t, func(h *hit, ctx *fasthttp.RequestCtx) {
		ctx.SetStatusCode(201)
		switch string(ctx.QueryArgs().Peek("x")) {
		case "small":
			ctx.SetBodyString("made")
		case "sized":
			ctx.Response.SetBodyRaw(sized)
		case "chunked":
			bigBody(ctx, 200<<10)
		case "huge":
			ctx.Response.SetBodyRaw(huge)
		}
	})
	_, q, _ := newQueue(t, "inv")
	c, _ := q.Consumer("inv")
	d, err := New(Config{Target: testTarget("inv", ds.url), Logger: quietLogger()}, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, cse := range []struct {
		x    string
		body string
	}{{"small", "made"}, {"sized", string(sized)}, {"chunked", strings.Repeat("x", 200<<10)}, {"huge", ""}, {"small", "made"}} {
		m := order(0)
		m.URI = "/api/orders?x=" + cse.x
		var resp fasthttp.Response
		if _, err := d.Forward(m, &resp); err != nil || resp.StatusCode() != 201 {
			t.Fatalf("x=%s: %d %v", cse.x, resp.StatusCode(), err)
		}
		if got := resp.Body(); string(got) != cse.body {
			t.Errorf("x=%s: body of %d bytes, want %d", cse.x, len(got), len(cse.body))
		}
	}
}
