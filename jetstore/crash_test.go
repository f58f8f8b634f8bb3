package jetstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/store"
)

// crash abandons s as a dead process would: the connection drops with no
// message given back and no lease released, then the embedded server stops.
func crash(s *Store) {
	s.nc.Close()
	for _, q := range s.queues {
		for _, c := range q.consumers {
			close(c.stop)
			<-c.done
			close(c.lease.stop)
			<-c.lease.done
		}
		q.sub.Unsubscribe()
	}
	s.shutdownServer()
}

// A node that dies with messages in flight: after a restart, those (and
// only those) are handed out again, once the dead node's lease expired and
// AckWait passed; outcomes recorded before the crash hold, and acks that
// never reached the server do not make delivered messages come back.
func TestCrashInFlight(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Logger: slog.New(slog.DiscardHandler), LeaseTTL: 500 * time.Millisecond, AckWait: 500 * time.Millisecond}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ids []store.ID
	for i := range 10 {
		id, err := q.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	c, _ := q.Consumer("a")
	now := time.Now()
	ds, err := c.Fetch(10, now)
	if err != nil || len(ds) != 10 {
		t.Fatalf("fetch: %d %v", len(ds), err)
	}
	for _, d := range ds[:4] {
		if err := c.Complete(ctx, d, store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: now, Status: 200}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Complete(ctx, ds[4], store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Status: 400}}); err != nil {
		t.Fatal(err)
	}
	crash(s)

	cfg.Node = "second"
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q, err = s.Queue("orders", []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	c, _ = q.Consumer("a")
	got := map[uint64]int{}
	deadline := time.Now().Add(15 * time.Second)
	for len(got) < 5 && time.Now().Before(deadline) {
		ds, err := c.Fetch(10, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			got[d.Seq]++
			if err := c.Complete(ctx, d, store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A little longer: nothing else may come.
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ds, err := c.Fetch(10, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			got[d.Seq]++
		}
	}
	if len(got) != 5 {
		t.Fatalf("after the crash %d messages were handed out again (%v), want the 5 in flight", len(got), got)
	}
	for _, id := range ids[:5] {
		if got[id.Seq()] != 0 {
			t.Fatalf("seq %d, finished before the crash, was handed out again", id.Seq())
		}
	}
	for _, id := range ids[5:] {
		if got[id.Seq()] != 1 {
			t.Fatalf("seq %d handed out %d times after the crash, want 1", id.Seq(), got[id.Seq()])
		}
	}
	if _, st, err := q.Lookup(ids[4]); err != nil || st[0].Phase != store.Dead {
		t.Fatalf("the dead letter after the crash: %v %+v", err, st)
	}
}

// A stream at max_bytes refuses appends with ErrFull (a *FullError) and
// keeps every message it acknowledged.
func TestFullRefusesKeepsAccepted(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), MaxBytes: 64 << 10, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	body := make([]byte, 1024)
	var ids []store.ID
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("1000 KiB appended to a 64 KiB stream without ErrFull")
		}
		id, err := q.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i), Body: body})
		if err != nil {
			var full *store.FullError
			if !errors.Is(err, store.ErrFull) || !errors.As(err, &full) {
				t.Fatalf("append %d: %v, want a *store.FullError", i, err)
			}
			break
		}
		ids = append(ids, id)
	}
	if len(ids) < 30 {
		t.Fatalf("only %d KiB accepted of 64", len(ids))
	}
	for i, id := range ids {
		if m, _, err := q.Lookup(id); err != nil || m.URI != fmt.Sprintf("/o/%d", i) {
			t.Fatalf("accepted message %d after the refusal: %v", i, err)
		}
	}
}

// A message held longer than AckWait (a slow target) is kept alive: the
// server never hands it out again while its node lives.
func TestKeepAlive(t *testing.T) {
	const ackWait = 600 * time.Millisecond
	s, err := Open(Config{Dir: t.TempDir(), AckWait: ackWait, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q, err := s.Queue("orders", []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := q.Append(ctx, &store.Message{Method: "POST", URI: "/o"}); err != nil {
		t.Fatal(err)
	}
	c, _ := q.Consumer("a")
	ds, err := c.Fetch(1, time.Now())
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetch: %d %v", len(ds), err)
	}
	time.Sleep(4 * ackWait)
	// The server hands an expired message out on the next pull.
	if again, err := c.Fetch(10, time.Now()); err != nil || len(again) != 0 {
		t.Fatalf("a held message was fetched again: %d %v", len(again), err)
	}
	info, err := c.cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 || info.NumAckPending != 1 {
		t.Fatalf("after 4 x AckWait held: %d redelivered, %d pending; want 0 and 1", info.NumRedelivered, info.NumAckPending)
	}
	if err := c.Complete(ctx, ds[0], store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}); err != nil {
		t.Fatal(err)
	}
}
