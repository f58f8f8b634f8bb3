package loadtest

import (
	"context"
	"fmt"
	"time"
)

// pollInterval is how often WaitDrained looks at the downstream: often
// enough that a test waits little past the last delivery, seldom enough
// that a run with a million ids does not spend its time in the check.
const pollInterval = 20 * time.Millisecond

// WaitDrained waits until d has answered 2xx to every id in ids, or timeout
// passes (ErrNotDrained), or ctx is done. Each poll checks only the ids
// still missing, so the cost shrinks as the backlog drains.
func WaitDrained(ctx context.Context, ids []string, d *Downstream, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()

	missing := d.Missing(ids)
	for len(missing) > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("loadtest: waiting for %d of %d ids: %w", len(missing), len(ids), ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("%w: %d of %d accepted ids undelivered after %v",
				ErrNotDrained, len(missing), len(ids), timeout)
		case <-tick.C:
			missing = d.Missing(missing)
		}
	}
	return nil
}
