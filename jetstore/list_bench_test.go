//go:build unix

package jetstore

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/sluice-proxy/sluice/store"
)

// cpuTime is the process's user and system CPU time: the client's and the
// in-process server's work together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchQueue is a route of n messages on an in-process server (file store,
// not synced: the setup is not measured), with two targets: a has the
// first half delivered, b none.
func benchQueue(b *testing.B, n int) *Queue {
	b.Helper()
	srv, err := server.NewServer(&server.Options{DontListen: true, JetStream: true, StoreDir: b.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		b.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		b.Fatal("server not ready")
	}
	b.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	s, err := Open(Config{Server: srv, HandoverQuiet: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	q, err := s.Queue("orders", []string{"a", "b"})
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		rec := store.EncodeRecord(nil, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i), IdempotencyKey: fmt.Sprintf("k%d", i),
			Body: make([]byte, 200), EnqueuedAt: time.Now()})
		if _, err := s.js.PublishAsync(q.subject, rec); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-s.js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("appends not acknowledged within a minute")
	}
	c, err := q.ConsumerWith("a", ConsumerOptions{MaxAckPending: 1024})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	done := 0
	for end := time.Now().Add(2 * time.Minute); done < n/2; {
		if time.Now().After(end) {
			b.Fatalf("setup: %d delivered after 2 minutes", done)
		}
		ds, err := c.Fetch(min(512, n/2-done), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		outs := make([]store.Outcome, len(ds))
		for i := range outs {
			outs[i] = store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}
		}
		for _, err := range c.CompleteBatch(ctx, ds, outs) {
			if err != nil {
				b.Fatal(err)
			}
		}
		done += len(ds)
	}
	return q
}

// BenchmarkList lists every message of a 10k-message route (both targets'
// states), 1000 a page: the cost per message listed, with the page's states
// read in one batched direct get, and one get each (servers before NATS
// 2.11), alternately in one run.
func BenchmarkList(b *testing.B) {
	const n = 10000
	q := benchQueue(b, n)
	for _, each := range []bool{false, true} {
		name := "batched"
		if each {
			name = "one-get-each"
		}
		b.Run(name, func(b *testing.B) {
			q.s.noMulti.Store(each)
			defer q.s.noMulti.Store(false)
			cpu0, t0 := cpuTime(), time.Now()
			for range b.N {
				rows := 0
				var after uint64
				for {
					last, end, err := q.Messages(store.Filter{}, after, 1000, func(*store.Row) bool { rows++; return true })
					if err != nil {
						b.Fatal(err)
					}
					if end {
						break
					}
					after = last
				}
				if rows != n {
					b.Fatalf("listed %d, want %d", rows, n)
				}
			}
			msgs := float64(b.N * n)
			b.ReportMetric(float64(cpuTime()-cpu0)/1e3/msgs, "cpu-µs/msg")
			b.ReportMetric(float64(time.Since(t0))/1e3/msgs, "µs/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkCounts counts one target of a 10k-message route with half its
// messages delivered: all time (a watch of its states) and within time
// bounds (a walk of the stream, as a listing).
func BenchmarkCounts(b *testing.B) {
	const n = 10000
	q := benchQueue(b, n)
	for _, bounded := range []bool{false, true} {
		name := "all"
		var since time.Time
		if bounded {
			name, since = "since", time.Now().Add(-time.Hour)
		}
		b.Run(name, func(b *testing.B) {
			cpu0, t0 := cpuTime(), time.Now()
			for range b.N {
				c, err := q.Counts("a", since, time.Time{})
				if err != nil {
					b.Fatal(err)
				}
				if c.Accepted != n || c.Delivered != n/2 || c.Check() != nil {
					b.Fatalf("counts %+v", c)
				}
			}
			msgs := float64(b.N * n)
			b.ReportMetric(float64(cpuTime()-cpu0)/1e3/msgs, "cpu-µs/msg")
			b.ReportMetric(float64(time.Since(t0))/1e3/msgs, "µs/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}
