package jetstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/sluice-proxy/sluice/store"
)

// startServer starts a single JetStream server on 127.0.0.1 (port 0: any)
// with its file store in dir, syncing every write.
func startServer(t *testing.T, dir string, port int) *server.Server {
	t.Helper()
	if port == 0 {
		port = -1
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		SyncAlways: true, NoSigs: true, NoLog: true, MaxPayload: DefaultMaxPayload})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		t.Fatal("server not ready after 30s")
	}
	return srv
}

func serverURL(srv *server.Server) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port)
}

func openURLNode(t *testing.T, url, node string) (*Store, *Queue) {
	return openURLNodeTTL(t, url, node, 600*time.Millisecond)
}

func openURLNodeTTL(t *testing.T, url, node string, ttl time.Duration) (*Store, *Queue) {
	t.Helper()
	s, err := Open(Config{URLs: []string{url}, Node: node, LeaseTTL: ttl, AckWait: ttl,
		HandoverQuiet: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	q, err := s.Queue("orders", []string{"a", "b"})
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	return s, q
}

// holding waits (bounded) until c holds its target's lease.
func holding(t *testing.T, c *Consumer) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !c.Holds(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the lease was not taken within 10s")
		}
	}
}

// A listing paged across a restart of the NATS server lists every message
// once, in order, with its phase; a page that fails while the server is
// down fails whole (ErrIO) and is read again from the same seq. The counts
// read on a node that does not hold the lease agree with the listing.
func TestListAcrossServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	url := serverURL(srv)
	port := srv.Addr().(*net.TCPAddr).Port
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()

	sa, qa := openURLNode(t, url, "node-a")
	defer sa.Close()
	sb, qb := openURLNode(t, url, "node-b")
	defer sb.Close()
	ctx := context.Background()
	const n = 300
	ids := make([]store.ID, n)
	for i := range ids {
		id, err := qa.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i), IdempotencyKey: fmt.Sprintf("k%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	ca, _ := qa.Consumer("a")
	holding(t, ca)
	// Node a: the first 100 delivered, 100..109 dead; the rest queued.
	ds := fetchN(t, ca, 110)
	for i, d := range ds {
		out := store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}
		if i >= 100 {
			out = store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: time.Now(), Status: 400, Error: "status 400"}}
		}
		if err := ca.Complete(ctx, d, out); err != nil {
			t.Fatal(err)
		}
	}
	// And 110..114 in flight on node a: node b sees them handed out.
	if held, err := ca.Fetch(5, time.Now()); err != nil || len(held) != 5 || held[0].Seq != ids[110].Seq() {
		t.Fatalf("fetch of 5 to hold: %d %v", len(held), err)
	}
	want := func(i int) store.Phase {
		switch {
		case i < 100:
			return store.Delivered
		case i < 110:
			return store.Dead
		case i < 115:
			return store.InFlight
		}
		return store.Queued
	}

	seen := map[store.ID]int{}
	var order []store.ID
	var after uint64
	pages, failed, restarted := 0, 0, false
	for end := time.Now().Add(60 * time.Second); ; {
		if time.Now().After(end) {
			t.Fatalf("the listing did not end within 60s (%d listed, %d pages)", len(order), pages)
		}
		if pages == 2 && !restarted {
			srv.Shutdown()
			srv.WaitForShutdown()
			// A page while the server is down fails whole.
			var rows int
			if _, _, err := qb.Messages(store.Filter{Target: "a"}, after, 40, func(*store.Row) bool { rows++; return true }); err == nil || rows != 0 {
				t.Fatalf("a page with the server down: %d rows, err %v", rows, err)
			}
			srv = startServer(t, dir, port)
			restarted = true
			// Node a's lease expired while the server was down: until it
			// takes it again, no node holds it and nothing is in flight.
			holding(t, ca)
		}
		var page []store.ID
		last, done, err := qb.Messages(store.Filter{Target: "a"}, after, 40, func(r *store.Row) bool {
			page = append(page, r.ID)
			i := int(r.ID.Seq() - ids[0].Seq())
			if r.Targets[0].Phase != want(i) {
				t.Errorf("seq %d: %s, want %s", r.ID.Seq(), r.Targets[0].Phase, want(i))
			}
			return true
		})
		if err != nil {
			if !errors.Is(err, store.ErrIO) {
				t.Fatalf("page after %d: %v", after, err)
			}
			failed++
			time.Sleep(100 * time.Millisecond) // reconnecting: read the page again
			continue
		}
		pages++
		for _, id := range page {
			seen[id]++
			order = append(order, id)
		}
		if done {
			break
		}
		after = last
	}
	if !restarted {
		t.Fatal("the server was never restarted")
	}
	t.Logf("%d pages, %d failed while reconnecting", pages, failed)
	if sb.noMulti.Load() {
		t.Fatal("the listing fell back to one get per state on a server that answers batched gets")
	}
	if len(order) != n {
		t.Fatalf("listed %d messages, want %d (pages %d, failed %d)", len(order), n, pages, failed)
	}
	for i, id := range ids {
		if order[i] != id || seen[id] != 1 {
			t.Fatalf("message %d: listed %d times, at %d: %s, want %s", i, seen[id], i, order[i], id)
		}
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := qb.Counts("a", time.Time{}, time.Time{})
		if err == nil {
			want := store.Counts{Target: "a", Accepted: n, Delivered: 100, Dead: 10, InFlight: 5, Queued: n - 115}
			if c != want || c.Check() != nil {
				t.Fatalf("counts on the other node after the restart: %+v, want %+v", c, want)
			}
			break
		}
		if time.Now().After(end) {
			t.Fatalf("counts after the restart: %v", err)
		}
	}
}

// Replays asked on one node while another holds the lease and is killed:
// the next holder delivers each replayed message exactly once, through the
// retry schedule, and nothing else comes back. A replay cut short after its
// first write (the retry entry, with the state still delivered) is undone,
// not half done: the message stays delivered and is not sent again.
func TestReplayHolderKilled(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	url := serverURL(srv)
	sa, qa := openURLNode(t, url, "node-a")
	ca, _ := qa.Consumer("a")
	holding(t, ca)
	sb, qb := openURLNode(t, url, "node-b")
	defer sb.Close()
	cb, _ := qb.Consumer("a")
	ctx := context.Background()
	const n = 40
	var ids []store.ID
	for i := range n {
		id, err := qb.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	ds := fetchN(t, ca, n)
	for i, d := range ds {
		out := store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}
		if i%3 == 0 {
			out = store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: time.Now(), Status: 500}}
		}
		if err := ca.Complete(ctx, d, out); err != nil {
			t.Fatal(err)
		}
	}
	// Node b replays every other message (delivered and dead ones), due now.
	replayed := map[uint64]bool{}
	for i := 0; i < n; i += 2 {
		if err := qb.Replay(ctx, "a", ids[i].Seq(), time.Now()); err != nil {
			t.Fatalf("replay of %d: %v", i, err)
		}
		replayed[ids[i].Seq()] = true
	}
	// Half a replay of message 1: the retry entry only.
	if err := qb.putRetry(ctx, "a", ids[1].Seq(), time.Now()); err != nil {
		t.Fatal(err)
	}
	crash(sa) // the holder dies before fetching any of them
	holding(t, cb)

	got := map[uint64]int{}
	for end := time.Now().Add(15 * time.Second); len(got) < len(replayed) && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		fetched, err := cb.Fetch(64, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range fetched {
			got[d.Seq]++
			if d.Attempt != 2 {
				t.Errorf("seq %d: attempt %d, want 2", d.Seq, d.Attempt)
			}
			if err := cb.Complete(ctx, d, store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A little longer: nothing else may come (AckWait and more).
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		fetched, err := cb.Fetch(64, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range fetched {
			got[d.Seq]++
		}
	}
	for seq := range replayed {
		if got[seq] != 1 {
			t.Errorf("replayed seq %d fetched %d times, want 1", seq, got[seq])
		}
	}
	for seq, k := range got {
		if !replayed[seq] {
			t.Errorf("seq %d, not replayed, fetched %d times", seq, k)
		}
	}
	_, st, err := qb.Lookup(ids[1])
	if err != nil || st[0].Phase != store.Delivered || len(st[0].History) != 1 {
		t.Fatalf("the half-replayed message: %v %+v", err, st)
	}
	c, err := qb.Counts("a", time.Time{}, time.Time{})
	wantDead := uint64(0)
	for i := 0; i < n; i += 3 {
		if !replayed[ids[i].Seq()] {
			wantDead++
		}
	}
	if err != nil || c.Delivered != n-wantDead || c.Dead != wantDead || c.Accepted != n || c.Check() != nil {
		t.Fatalf("counts after the replays: %+v %v", c, err)
	}
	if dl, err := qb.DeadLetters("a", 0, 100); err != nil || uint64(len(dl)) != wantDead {
		t.Fatalf("dead letters after the replays: %d %v, want %d", len(dl), err, wantDead)
	}
}

// A replay asked on a node while the holder misses the notice (its
// subscription gone, as during a reconnection) is delivered all the same:
// the holder reads its retry schedule from the bucket again every
// scheduleRefresh.
func TestReplayNoticeLost(t *testing.T) {
	old := scheduleRefresh
	scheduleRefresh = 300 * time.Millisecond
	defer func() { scheduleRefresh = old }()
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	url := serverURL(srv)
	sa, qa := openURLNodeTTL(t, url, "node-a", 5*time.Second)
	defer sa.Close()
	ca, _ := qa.Consumer("a")
	holding(t, ca)
	sb, qb := openURLNodeTTL(t, url, "node-b", 5*time.Second)
	defer sb.Close()
	ctx := context.Background()
	var ids []store.ID
	for i := range 5 {
		id, err := qa.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	delivered := store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}
	var n int
	for end := time.Now().Add(10 * time.Second); n < 5 && time.Now().Before(end); {
		ds, err := ca.Fetch(5, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if err := ca.Complete(ctx, d, delivered); err != nil {
				t.Fatal(err)
			}
		}
		n += len(ds)
	}
	if n != 5 {
		t.Fatalf("delivered %d, want 5", n)
	}
	qa.sub.Unsubscribe() // node a hears no notice from now on
	for _, id := range ids {
		if err := qb.Replay(ctx, "a", id.Seq(), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint64]int{}
	for end := time.Now().Add(10 * time.Second); len(got) < 5 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		ds, err := ca.Fetch(5, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			got[d.Seq]++
			if err := ca.Complete(ctx, d, delivered); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, id := range ids {
		if got[id.Seq()] != 1 {
			t.Fatalf("replayed seq %d fetched %d times by the holder that missed the notice, want 1", id.Seq(), got[id.Seq()])
		}
	}
}

// Two nodes replay the same delivered messages at once: for each message
// one replay wins and the other is ErrNotFound (the state is swapped by
// revision), and the holder delivers each once.
func TestReplayConcurrent(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir, 0)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	url := serverURL(srv)
	sa, qa := openURLNodeTTL(t, url, "node-a", 5*time.Second)
	defer sa.Close()
	ca, _ := qa.Consumer("a")
	holding(t, ca)
	sb, qb := openURLNodeTTL(t, url, "node-b", 5*time.Second)
	defer sb.Close()
	ctx := context.Background()
	const n = 20
	var ids []store.ID
	for i := range n {
		id, err := qa.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	delivered := store.Outcome{Phase: store.Delivered, Attempt: store.Attempt{At: time.Now(), Status: 200}}
	done := 0
	for end := time.Now().Add(10 * time.Second); done < n && time.Now().Before(end); {
		ds, err := ca.Fetch(n, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if err := ca.Complete(ctx, d, delivered); err != nil {
				t.Fatal(err)
			}
		}
		done += len(ds)
	}
	if done != n {
		t.Fatalf("delivered %d, want %d", done, n)
	}
	errs := [2][]error{make([]error, n), make([]error, n)}
	var wg sync.WaitGroup
	for k, q := range []*Queue{qa, qb} {
		wg.Go(func() {
			for i, id := range ids {
				errs[k][i] = q.Replay(ctx, "a", id.Seq(), time.Now())
			}
		})
	}
	wg.Wait()
	swapped := 0 // lost at the compare-and-set, not at the first read
	for i := range ids {
		a, b := errs[0][i], errs[1][i]
		for _, err := range []error{a, b} {
			if err != nil && strings.Contains(err.Error(), "changed") {
				swapped++
			}
		}
		won := (a == nil) != (b == nil)
		lost := errors.Is(a, store.ErrNotFound) || errors.Is(b, store.ErrNotFound)
		if !won || !lost {
			t.Fatalf("message %d replayed on both nodes: %v and %v, want one nil and one ErrNotFound", i, a, b)
		}
	}
	t.Logf("%d of %d lost at the compare-and-set", swapped, n)
	got := map[uint64]int{}
	for end := time.Now().Add(10 * time.Second); len(got) < n && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		ds, err := ca.Fetch(n, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			got[d.Seq]++
			if err := ca.Complete(ctx, d, delivered); err != nil {
				t.Fatal(err)
			}
		}
	}
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		ds, _ := ca.Fetch(n, time.Now())
		for _, d := range ds {
			got[d.Seq]++
		}
	}
	for _, id := range ids {
		if got[id.Seq()] != 1 {
			t.Fatalf("seq %d fetched %d times after the replays, want 1", id.Seq(), got[id.Seq()])
		}
		_, st, err := qa.Lookup(id)
		if err != nil || st[0].Phase != store.Delivered || len(st[0].History) != 3 {
			t.Fatalf("seq %d after one replay: %v %+v", id.Seq(), err, st)
		}
	}
}

// fetchN fetches n messages from c, within 10 s, or fails the test.
func fetchN(t *testing.T, c store.Consumer, n int) []*store.Delivery {
	t.Helper()
	var ds []*store.Delivery
	for end := time.Now().Add(10 * time.Second); len(ds) < n && time.Now().Before(end); {
		got, err := c.Fetch(n-len(ds), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, got...)
	}
	if len(ds) != n {
		t.Fatalf("fetched %d, want %d", len(ds), n)
	}
	return ds
}

// A listing of a route with more targets than one batched direct get of
// the states can answer for a batch of records (1024 states: 64 records
// and 16 targets) reads them with a few batched gets, not one get per
// state, and every state lands on its own message and target.
func TestListManyTargetsBatched(t *testing.T) {
	srv := startServer(t, t.TempDir(), 0)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	s, err := Open(Config{URLs: []string{serverURL(srv)}, Node: "node-a", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const nt, n = 20, 64 // 1280 states: two requests of at most 1024
	targets := make([]string, nt)
	for i := range targets {
		targets[i] = fmt.Sprintf("t%02d", i)
	}
	q, err := s.Queue("orders", targets)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	seqs := make([]uint64, n)
	for i := range seqs {
		id, err := q.Append(ctx, &store.Message{Method: "POST", URI: fmt.Sprintf("/o/%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		seqs[i] = id.Seq()
	}
	// Message i is delivered to targets i%nt and (i+7)%nt, with a status
	// that names both; every other (message, target) has no state.
	status := func(i, t int) int { return 200 + (i*nt+t)%100 }
	has := func(i, t int) bool { return t == i%nt || t == (i+7)%nt }
	for i, seq := range seqs {
		for tt, name := range targets {
			if !has(i, tt) {
				continue
			}
			st := &store.State{Phase: store.Delivered, Attempts: 1, History: []store.Attempt{{At: time.Now(), Status: status(i, tt)}}}
			if err := q.putState(ctx, name, seq, st); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Count the state bucket's direct gets from another connection: a
	// batched one is a request to the bucket's subject, a single one to
	// the bucket's subject and the key.
	nc, err := nats.Connect(serverURL(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	api := "$JS.API.DIRECT.GET.KV_" + DefaultStreamPrefix + "_state"
	multi, err := nc.SubscribeSync(api)
	if err != nil {
		t.Fatal(err)
	}
	single, err := nc.SubscribeSync(api + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	rows := 0
	_, done, err := q.Messages(store.Filter{}, 0, n, func(r *store.Row) bool {
		i := int(r.ID.Seq() - seqs[0])
		if i < 0 || i >= n || len(r.Targets) != nt {
			t.Errorf("row for seq %d with %d targets", r.ID.Seq(), len(r.Targets))
			return false
		}
		for tt, rt := range r.Targets {
			want, wantStatus := store.Queued, 0
			if has(i, tt) {
				want, wantStatus = store.Delivered, status(i, tt)
			}
			if rt.Target != targets[tt] || rt.Phase != want || rt.Status != wantStatus {
				t.Errorf("message %d, target %d: %+v, want %s %s status %d", i, tt, rt, targets[tt], want, wantStatus)
			}
		}
		rows++
		return true
	})
	if err != nil || !done || rows != n {
		t.Fatalf("listed %d rows, done %v, err %v; want %d", rows, done, err, n)
	}
	if err := nc.Flush(); err != nil { // the requests seen reach us before the PONG
		t.Fatal(err)
	}
	count := func(sub *nats.Subscription) int {
		k := 0
		for ; k < 10*n*nt; k++ {
			if _, err := sub.NextMsg(50 * time.Millisecond); err != nil {
				break
			}
		}
		return k
	}
	if m, g := count(multi), count(single); m != 2 || g != 0 {
		t.Fatalf("the listing of %d messages with %d targets made %d batched and %d single gets of states, want 2 and 0", n, nt, m, g)
	}
	if s.noMulti.Load() {
		t.Fatal("the listing fell back to one get per state")
	}
}
