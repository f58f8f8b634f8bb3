package drain

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/internal/buftest"
	"github.com/sluice-proxy/sluice/policies"
)

const tenantHeader = "X-Tenant-Id"

func tenantMsg(tenant string, i int) *buffer.Message {
	m := &buffer.Message{
		Method: "POST", URI: "/api/events",
		Body: fmt.Appendf(nil, `{"tenant":%q,"n":%d}`, tenant, i),
	}
	if tenant != "" {
		m.Header = []buffer.Header{{Name: tenantHeader, Value: tenant}}
	}
	return m
}

func fairTarget(url string, perSecond float64) policies.Target {
	tg := testTarget("a", url)
	tg.Rate = policies.Rate{PerSecond: perSecond}
	tg.Burst = 0 // the default: ceil(rate/10)
	tg.Concurrency = 16
	tg.Fairness = &policies.Fairness{Key: policies.KeySource{Header: tenantHeader}}
	return tg
}

// fairRun is one flood-and-trickle scenario: tenant F appends flood
// messages at once, tenant T one every 100ms, and a few messages carry no
// key. restartAfter > 0 stops the drainer after that many trickle messages,
// closes and reopens the store, and starts a new drainer.
type fairRun struct {
	flood, trickle, unkeyed int
	restartAfter            int
	perSecond               float64
}

type fairResultT struct {
	accepted map[string]time.Time // id -> when Append returned
	tenant   map[string]string    // id -> tenant
	aheadF   map[string]int       // trickle id -> flood messages ahead of it, undelivered at its accept
	hits     []hit
	burst    int
}

func (fr fairRun) run(t *testing.T) fairResultT {
	dir := t.TempDir()
	st := openStore(t, dir, buffer.SyncAlways)
	q := buftest.Queue(t, st, "orders", "a")
	ds := newDownstream(t, nil)
	tg := fairTarget(ds.url, fr.perSecond)
	d, stop := startDrainer(t, Config{Target: tg}, consumer(t, q, "a"))
	res := fairResultT{accepted: map[string]time.Time{}, tenant: map[string]string{}, aheadF: map[string]int{}, burst: d.Target().Burst}
	var mu sync.Mutex
	accept := func(tenant string, m *buffer.Message, at time.Time) {
		mu.Lock()
		res.accepted[m.ID.String()] = at
		res.tenant[m.ID.String()] = tenant
		mu.Unlock()
	}

	var floodDone sync.WaitGroup
	floodDone.Go(func() {
		msgs := appendN(t, q, fr.flood, func(i int) *buffer.Message { return tenantMsg("F", i) })
		now := time.Now()
		for _, m := range msgs {
			accept("F", m, now)
		}
	})
	for i := range fr.unkeyed {
		m := tenantMsg("", i)
		if _, err := q.Append(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		accept("", m, time.Now())
	}
	floodDone.Wait() // the flood is in the queue before the trickle starts
	tick := time.NewTicker(100 * ms)
	defer tick.Stop()
	for i := range fr.trickle {
		<-tick.C
		if fr.restartAfter > 0 && i == fr.restartAfter {
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			t.Logf("restart: %d delivered, %d parked by the first drainer", d.Stats().Delivered, d.Stats().Parked)
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st = openStore(t, dir, buffer.SyncAlways)
			q = buftest.Queue(t, st, "orders", "a")
			d, stop = startDrainer(t, Config{Target: tg}, consumer(t, q, "a"))
		}
		m := tenantMsg("T", i)
		if _, err := q.Append(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		accept("T", m, time.Now())
		// Without fairness it would wait for every flood message before it.
		delivered := map[string]bool{}
		for _, h := range ds.snapshot() {
			delivered[h.id] = true
		}
		ahead := 0
		mu.Lock()
		for id, tn := range res.tenant {
			if tn == "F" && !delivered[id] {
				ahead++
			}
		}
		res.aheadF[m.ID.String()] = ahead
		mu.Unlock()
	}
	total := fr.flood + fr.trickle + fr.unkeyed
	budget := time.Duration(float64(total)/fr.perSecond*float64(time.Second)) + 10*time.Second
	waitFor(t, budget, "every message delivered", func() bool { return len(ds.ids()) >= total })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Nothing is left parked.
	var left int
	if err := consumer(t, q, "a").ParkedKeys(func([16]byte, uint64) bool { left++; return true }); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d keys still have parked messages", left)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	res.hits = ds.snapshot()
	return res
}

// check checks the trickle's delay, delivery (at least once; exactly once
// if exact) and the rate, and logs what happened.
func (fr fairRun) check(t *testing.T, res fairResultT, exact bool) {
	t.Helper()
	seen := map[string]int{}
	var maxDelay, sumDelay, maxWithout time.Duration
	var trickles int
	for _, h := range res.hits {
		seen[h.id]++
		if seen[h.id] > 1 {
			continue
		}
		at, ok := res.accepted[h.id]
		if !ok {
			t.Errorf("delivered id %s was never accepted", h.id)
			continue
		}
		if res.tenant[h.id] == "T" {
			delay := h.at.Sub(at)
			trickles++
			sumDelay += delay
			maxDelay = max(maxDelay, delay)
			without := time.Duration(float64(res.aheadF[h.id]) / fr.perSecond * float64(time.Second))
			maxWithout = max(maxWithout, without)
		}
	}
	dups := 0
	for id := range res.accepted {
		switch n := seen[id]; {
		case n == 0:
			t.Errorf("%s (tenant %q) was never delivered", id, res.tenant[id])
		case n > 1:
			dups += n - 1
		}
	}
	if exact && dups > 0 {
		t.Errorf("%d duplicate deliveries; want exactly once", dups)
	}
	if trickles != fr.trickle {
		t.Errorf("%d trickle messages delivered, want %d", trickles, fr.trickle)
	}
	t.Logf("trickle delay: max %v, mean %v over %d messages; without fairness up to ~%v (flood backlog ahead / rate); %d duplicates",
		maxDelay.Round(ms), (sumDelay / time.Duration(max(trickles, 1))).Round(ms), trickles, maxWithout.Round(ms), dups)
	if maxDelay > time.Second {
		t.Errorf("the trickle waited up to %v; want under 1s while the flood drains", maxDelay)
	}

	// Rate: no 1s window holds more than rate + burst, plus a little for the
	// jitter between taking a token and the request's arrival. A restart
	// starts a new, full bucket: a window across it may hold one more burst.
	ats := make([]time.Time, len(res.hits))
	for i, h := range res.hits {
		ats[i] = h.at
	}
	slices.SortFunc(ats, func(a, b time.Time) int { return a.Compare(b) })
	worst, j := 0, 0
	for i := range ats {
		for ats[i].Sub(ats[j]) >= time.Second {
			j++
		}
		worst = max(worst, i-j+1)
	}
	limit := int(fr.perSecond) + res.burst + 2 + int(fr.perSecond)/50
	if fr.restartAfter > 0 {
		limit += res.burst
	}
	t.Logf("busiest 1s window: %d requests (rate %v, burst %d)", worst, fr.perSecond, res.burst)
	if worst > limit {
		t.Errorf("a 1s window held %d requests; want at most %d", worst, limit)
	}
}

func TestFairnessFloodAndTrickle(t *testing.T) {
	fr := fairRun{flood: 2000, trickle: 30, unkeyed: 20, perSecond: 200}
	fr.check(t, fr.run(t), true)
}

// TestFairnessRestart: a graceful stop and restart in the middle of the
// flood delivers everything exactly once. At the stop, the ready queues are
// released (a first attempt rewinds the cursor, whose reads skip messages
// with a state or in flight; an unparked one is due in the retry schedule
// again), the attempts under way are recorded before the store closes, and
// parked messages are listed by the next Run: nothing that reached the
// target is handed out again. Only a crash, or an outcome that could not be
// recorded, sends a message twice.
func TestFairnessRestart(t *testing.T) {
	fr := fairRun{flood: 600, trickle: 30, unkeyed: 20, perSecond: 200, restartAfter: 10}
	fr.check(t, fr.run(t), true)
}

// TestLeftoverParkedUnparked: messages parked by fairness (or ordering) are
// delivered by a drainer whose target uses neither any more.
func TestLeftoverParkedUnparked(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, buffer.SyncAlways)
	q := buftest.Queue(t, st, "orders", "a")
	msgs := appendN(t, q, 100, func(i int) *buffer.Message { return tenantMsg(fmt.Sprint("k", i%3), i) })
	c := consumer(t, q, "a")
	got, err := c.Fetch(80, time.Now())
	if err != nil || len(got) != 80 {
		t.Fatalf("Fetch: %d, %v", len(got), err)
	}
	for i, dl := range got {
		park(t, c, dl, fmt.Sprint("k", i%3))
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir, buffer.SyncAlways)
	q = buftest.Queue(t, st, "orders", "a")
	ds := newDownstream(t, nil)
	_, stop := startDrainer(t, Config{Target: testTarget("a", ds.url)}, consumer(t, q, "a"))
	// Every message is delivered exactly once: nothing failed or stopped, so
	// an unparked message claimed by a Fetch is never handed out again.
	waitFor(t, 10*time.Second, "every message delivered", func() bool {
		seen := ds.ids()
		for _, m := range msgs {
			if seen[m.ID.String()] == 0 {
				return false
			}
		}
		return true
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	seen := ds.ids()
	for _, m := range msgs {
		if n := seen[m.ID.String()]; n == 0 {
			t.Errorf("%s lost", m.ID)
		} else if n > 1 {
			t.Errorf("seq %d delivered %d times; want once", m.ID.Seq(), n)
		}
	}
}
