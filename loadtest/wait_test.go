package loadtest

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestWaitDrained(t *testing.T) {
	d := startDownstream(t, DownstreamConfig{})
	ids := []string{"a", "b", "c"}

	// Nothing to wait for.
	if err := WaitDrained(context.Background(), nil, d, time.Millisecond); err != nil {
		t.Errorf("no ids: %v", err)
	}

	hit(t, d, "X-Sluice-Id", "a")
	err := WaitDrained(context.Background(), ids, d, 50*time.Millisecond)
	if !errors.Is(err, ErrNotDrained) {
		t.Errorf("2 of 3 missing: err = %v, want ErrNotDrained", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WaitDrained(ctx, ids, d, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v, want context.Canceled", err)
	}

	// The rest arrives while WaitDrained polls.
	go func() {
		time.Sleep(30 * time.Millisecond)
		post(d, "X-Sluice-Id", "b")
		post(d, "X-Sluice-Id", "c")
	}()
	start := time.Now()
	if err := WaitDrained(context.Background(), ids, d, 5*time.Second); err != nil {
		t.Errorf("drained: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("WaitDrained returned %v after the last delivery", took)
	}
}
