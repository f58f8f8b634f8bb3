package drain

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/jetstore"
	"github.com/sluice-proxy/sluice/store"
)

// TestOrderingPerKeyJetStream is TestOrderingPerKey on the JetStream engine
// (an embedded server): parking, unparking and the retry schedule through
// store.Parker as jetstore implements it.
func TestOrderingPerKeyJetStream(t *testing.T) {
	s, err := jetstore.Open(jetstore.Config{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := q.Consumer("a")
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{"a", "b", "p"}
	var first atomic.Uint64
	var until atomic.Int64
	until.Store(time.Now().Add(time.Hour).UnixNano())
	ds := newDownstream(t, poison("p", first.Load, &until))
	want := appendKeyed(t, q, keys, 20)
	first.Store(want["p"][0])

	d, stop := startDrainer(t, Config{Target: orderedTarget(ds.url)}, c)
	delivered := func(key string) int {
		n := 0
		for _, h := range ds.snapshot() {
			if k, _ := h.get(customerHeader); k == key && h.status >= 200 && h.status <= 299 {
				n++
			}
		}
		return n
	}
	waitFor(t, 30*time.Second, "keys a and b delivered while key p's first message is refused", func() bool {
		return delivered("a") == 20 && delivered("b") == 20
	})
	if n := delivered("p"); n != 0 {
		t.Fatalf("key p: %d messages delivered while its first was refused", n)
	}
	release := time.Now()
	until.Store(release.UnixNano())
	waitFor(t, 30*time.Second, "all delivered", func() bool { return d.Stats().Delivered == 60 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	done := checkOrder(t, ds.snapshot(), want)
	st := d.Stats()
	t.Logf("parked %d, retried %d; p done %v after its first was accepted", st.Parked, st.Retried, done["p"].Sub(release))
	if st.Parked == 0 {
		t.Error("nothing was parked: key p's later messages did not wait in the store")
	}
}

// TestOrderingRestartOwnerInRetrySchedule on the JetStream engine: after a
// restart (of the embedded server too), the owner waiting in the retry
// schedule is found at start, its key keeps waiting for it, and the other
// keys are not held back.
func TestOrderingRestartOwnerInRetryScheduleJetStream(t *testing.T) {
	dir := t.TempDir()
	open := func() (*jetstore.Store, *jetstore.Queue, *jetstore.Consumer) {
		s, err := jetstore.Open(jetstore.Config{Dir: dir, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		q, err := s.Queue("orders", []string{"a"})
		if err != nil {
			t.Fatal(err)
		}
		c, err := q.Consumer("a")
		if err != nil {
			t.Fatal(err)
		}
		return s, q, c
	}
	s, q, c := open()
	var pSeqs []uint64
	for i := range 3 {
		id, err := q.Append(context.Background(), keyed("p", i))
		if err != nil {
			t.Fatal(err)
		}
		pSeqs = append(pSeqs, id.Seq())
	}
	got, err := c.Fetch(10, time.Now())
	if err != nil || len(got) != 3 {
		t.Fatalf("fetched %d: %v", len(got), err)
	}
	retryAt := time.Now().Add(1500 * ms)
	if err := c.Complete(context.Background(), got[0], store.Outcome{Phase: store.Retrying, NextTry: retryAt,
		Attempt: store.Attempt{At: time.Now(), Status: 503}}); err != nil {
		t.Fatal(err)
	}
	for _, d := range got[1:] {
		if err := c.Park(context.Background(), d, store.KeyHash([]byte("p"))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, q, c = open()
	t.Cleanup(func() { s.Close() })
	want := appendKeyed(t, q, []string{"a", "p"}, 5)
	want["p"] = append(pSeqs, want["p"]...)
	ds := newDownstream(t, nil)
	d, stop := startDrainer(t, Config{Target: orderedTarget(ds.url)}, c)
	waitFor(t, 15*time.Second, "every message delivered", func() bool { return d.Stats().Delivered == 13 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	done := checkOrder(t, ds.snapshot(), want)
	if !done["a"].Before(retryAt) {
		t.Errorf("key a finished at %v, after p's retry was due (%v): held back by it",
			done["a"].Format("15:04:05.000"), retryAt.Format("15:04:05.000"))
	}
	if done["p"].Before(retryAt) {
		t.Errorf("key p finished before its first message's retry was due")
	}
}
