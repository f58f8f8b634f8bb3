package drain

import (
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
	r := runPoisonedKey(t, q, c, 20, 30*time.Second)
	st := r.d.Stats()
	t.Logf("parked %d, retried %d; p done %v after its first was accepted", st.Parked, st.Retried, r.done["p"].Sub(r.release))
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
	ownerInRetrySchedule(t, func() (store.Queue, parkingSource, func() error) {
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
		return q, c, s.Close
	}, 15*time.Second)
}
