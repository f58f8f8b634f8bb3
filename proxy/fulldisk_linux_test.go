package proxy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/buffer"
)

// A buffered route on a disk that fills up: every request is answered 202
// (and then stored) or 503 with a JSON error and Retry-After (and then not
// acknowledged); the server keeps serving, and accepts again once space is
// freed. The disk is a real 6 MiB tmpfs (skipped where none can be mounted;
// buffer's TestWriteErrorFailsOnlyThatCommit injects the error instead).
func TestFullDiskAnswers503(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "small")
	must(t, os.Mkdir(dir, 0o700))
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=6m"); err != nil {
		t.Skipf("cannot mount a small tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	filler := filepath.Join(dir, "filler")
	must(t, os.WriteFile(filler, make([]byte, 4<<20), 0o600))
	base, s := testServer(t, "http://127.0.0.1:1", buffer.Config{Dir: filepath.Join(dir, "data"), SegmentBytes: 256 << 10})

	body := `{"order":"` + strings.Repeat("x", 900) + `"}`
	var (
		mu      sync.Mutex
		ids     []string
		refused int
		bad     []string
	)
	post := func() int {
		req := fasthttp.AcquireRequest()
		defer fasthttp.ReleaseRequest(req)
		resp := fasthttp.AcquireResponse()
		defer fasthttp.ReleaseResponse(resp)
		req.Header.SetMethod("POST")
		req.SetRequestURI(base + "/api/orders")
		req.SetBodyString(body)
		if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
			mu.Lock()
			bad = append(bad, "transport: "+err.Error())
			mu.Unlock()
			return 0
		}
		var eb errorBody
		var ab acceptedBody
		mu.Lock()
		defer mu.Unlock()
		switch code := resp.StatusCode(); {
		case code == 202 && json.Unmarshal(resp.Body(), &ab) == nil && ab.ID != "":
			ids = append(ids, ab.ID)
		case code == 503 && json.Unmarshal(resp.Body(), &eb) == nil && eb.Error.Code != "" && len(resp.Header.Peek("Retry-After")) > 0:
			refused++
			if eb.Error.Code != "storage_full" {
				// A full disk is said as such, not as a generic storage error.
				bad = append(bad, "code "+eb.Error.Code+": "+string(resp.Body()))
			}
		default:
			bad = append(bad, string(resp.Body()))
		}
		return resp.StatusCode()
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				post()
				mu.Lock()
				stop := refused >= 50 || len(bad) > 0
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d answers neither a 202 with an id nor a JSON 503 with Retry-After; first: %q", len(bad), bad[0])
	}
	if refused == 0 || len(ids) == 0 {
		t.Fatalf("the disk should have filled after some 202s: %d accepted, %d refused", len(ids), refused)
	}
	t.Logf("%d accepted, %d refused with 503", len(ids), refused)

	must(t, os.Remove(filler))
	code := 0
	for i := 0; i < 100 && code != 202; i++ {
		if code = post(); code != 202 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if code != 202 {
		t.Fatalf("still refused after space was freed: last status %d", code)
	}
	q := s.testQueue("orders")
	for _, sid := range ids {
		id, err := buffer.ParseID(sid)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := q.Lookup(id); err != nil {
			t.Fatalf("202 %s not in the store after the full disk: %v", sid, err)
		}
	}
}
