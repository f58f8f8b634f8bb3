package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
)

// TestNewETAsReuse: a route's estimates for a new message are reused only
// while young and while the appends since then cannot move them by more than
// a little (etaTolerance); max_wait routes always compute them.
func TestNewETAsReuse(t *testing.T) {
	s, _ := newTestServer(t, `
routes:
  - name: quick
    match: { path: /quick }
    targets:
      - { name: fast, url: "http://127.0.0.1:1" }
      - { name: stopped, url: "http://127.0.0.1:1", rate: 0 }
  - name: slow
    match: { path: /slow }
    targets:
      - { name: fast, url: "http://127.0.0.1:1" }
      - { name: slow, url: "http://127.0.0.1:1", rate: 1/s }
  - name: bounded
    match: { path: /bounded }
    max_wait: 1h
    targets:
      - { name: fast, url: "http://127.0.0.1:1" }
`, buffer.Config{Sync: buffer.SyncNever}, nil)
	quick, slow, bounded := s.routes()[0], s.routes()[1], s.routes()[2]
	now := time.Now()
	etas := func(r *route, at time.Time) []targetETA { return r.newETAs(nil, at) }

	// Unlimited and paused targets: 64 appends move nothing; reused until
	// the TTL, up to etaCacheProbe appends.
	e := etas(quick, now)
	if !e[0].ok || !e[0].at.Equal(now) || e[1].ok {
		t.Fatalf("quick: %+v", e)
	}
	c := quick.etaCache.Load()
	fill(t, quick.queue, etaCacheProbe)
	if e := etas(quick, now.Add(time.Millisecond)); quick.etaCache.Load() != c || !e[0].at.Equal(now.Add(time.Millisecond)) {
		t.Errorf("quick: recomputed after %d appends, or eta %v not now", etaCacheProbe, e[0].at)
	}
	if etas(quick, now.Add(etaCacheTTL)); quick.etaCache.Load() == c {
		t.Error("quick: reused past the TTL")
	}
	c = quick.etaCache.Load()
	fill(t, quick.queue, etaCacheProbe+1)
	if etas(quick, now.Add(etaCacheTTL+time.Microsecond)); quick.etaCache.Load() == c {
		t.Errorf("quick: reused after %d appends", etaCacheProbe+1)
	}

	// A slow target: every append counts while the backlog is small...
	etas(slow, now)
	fill(t, slow.queue, 1)
	if e := etas(slow, now.Add(time.Microsecond)); !e[1].ok || !near(e[1].at, now.Add(time.Second), 10*time.Millisecond) {
		t.Errorf("slow: eta %+v after 1 append, want now+1s", e[1])
	}
	// ... and 1/etaCacheSlack of it once it is large.
	fill(t, slow.queue, 2*etaCacheSlack-1) // backlog 512: 2 appends tolerated
	later := now.Add(2 * time.Microsecond)
	if e := etas(slow, later); !near(e[1].at, later.Add(512*time.Second), 10*time.Millisecond) {
		t.Errorf("slow: eta %v, want +512s", e[1].at)
	}
	c = slow.etaCache.Load()
	fill(t, slow.queue, 2)
	if etas(slow, later.Add(time.Microsecond)); slow.etaCache.Load() != c {
		t.Error("slow: recomputed after 2 appends to a backlog of 512")
	}
	fill(t, slow.queue, 1)
	if e := etas(slow, later.Add(2*time.Microsecond)); slow.etaCache.Load() == c || !near(e[1].at, later.Add(515*time.Second), 10*time.Millisecond) {
		t.Errorf("slow: reused after 3 appends to a backlog of 512, or eta %v not +515s", e[1].at)
	}

	// max_wait: never cached.
	etas(bounded, now)
	if bounded.etaCache.Load() != nil {
		t.Error("bounded: cached")
	}
}

// TestMaxWaitPausedWindowEmptyQueue: the first message into an empty queue
// while a paused window is open is estimated at the window's end, not now,
// so max_wait refuses it as it refuses the second; here the windows pause
// the target all day, so the estimate is unknown and the 202 carries none.
func TestMaxWaitPausedWindowEmptyQueue(t *testing.T) {
	base, s := policyServer(t, `
routes:
  - name: bounded
    match: { path: /bounded }
    max_wait: 1h
    targets:
      - name: paused
        url: "http://127.0.0.1:1"
        rate: 10/s
        windows: [{ between: "00:00-12:00", rate: 0 }, { between: "12:00-00:00", rate: 0 }]
  - name: open
    match: { path: /open }
    targets:
      - name: paused
        url: "http://127.0.0.1:1"
        rate: 10/s
        windows: [{ between: "00:00-12:00", rate: 0 }, { between: "12:00-00:00", rate: 0 }]
`)
	if r := do(t, "POST", base+"/bounded", "{}", nil); r.StatusCode() != 503 || !strings.Contains(string(r.Body()), "backlog_too_long") {
		t.Errorf("first message, paused all day, max_wait 1h: %d %s, want 503 backlog_too_long", r.StatusCode(), r.Body())
	}
	if n := s.testQueue("bounded").Stats().Appended; n != 0 {
		t.Errorf("%d stored", n)
	}
	r := do(t, "POST", base+"/open", "{}", nil)
	if r.StatusCode() != 202 || strings.Contains(string(r.Body()), `"eta"`) {
		t.Errorf("first message, paused all day: %d %s, want 202 without an eta", r.StatusCode(), r.Body())
	}
}
