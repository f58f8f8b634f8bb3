package heapfloor

import (
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		want        int
	}{
		{0, 64 * mib, 1600},          // nothing live yet: the cap
		{1 * mib, 64 * mib, 1600},    // 1 MiB*17 = 17 MiB < 64 MiB, but 4 MiB*16 = 64 MiB is the goal
		{3 * mib, 64 * mib, 1600},    // 2033 capped: the goal is max(3*17, 4*16) = 64 MiB
		{8 * mib, 64 * mib, 700},     // 8 MiB * 8 = 64 MiB
		{32 * mib, 64 * mib, 100},    // at half the floor: GOGC=100 reaches it
		{48 * mib, 64 * mib, 100},    // above half: never below 100
		{128 * mib, 64 * mib, 100},   // past the floor
		{1 * mib, 2 * mib, 100},      // a floor under the runtime's minimum changes nothing
		{10 * mib, 1 << 30, 10140},   // a 1 GiB floor
		{1, 64 * mib, 1600},          // a tiny live heap: the cap
		{63 * mib, 64 * mib, 100},    // (64-63)/63 < 1
		{16 * mib, 64 * mib, 300},    // 16*4 = 64
		{20 * mib, 64 * mib, 220},    // 20*3.2 = 64
		{40 * mib, 64 * mib, 100},    // 60% < 100%
		{4 * mib, 64 * mib, 1500},    // 4*16 = 64
		{5 * mib, 64 * mib, 1180},    // 5*12.8 = 64
		{2 * mib, 64 * mib, 1600},    // 3100 capped
		{64 * mib, 64 * mib, 100},    // at the floor
		{64*mib - 1, 64 * mib, 100},  // just under it
		{1 << 40, 64 * mib, 100},     // huge
		{1 * mib, 1 << 40, 26214400}, // a huge floor: the cap, 2^40*100/2^22
	} {
		if got := Percent(c.live, c.floor); got != c.want {
			t.Errorf("Percent(%d MiB, %d MiB) = %d, want %d", c.live/mib, c.floor/mib, got, c.want)
		}
	}
}

// unsetenv removes k from the environment for the test (t.Setenv puts
// back what was there).
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "")
	os.Unsetenv(k)
}

func gogc(t *testing.T) uint64 {
	t.Helper()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatal("/gc/gogc:percent is not supported")
	}
	return s[0].Value.Uint64()
}

// waitPercent collects until the percent satisfies ok (the finalizer that
// sets it runs after a collection, on its own goroutine), at most 5 s.
func waitPercent(t *testing.T, ok func(uint64) bool) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		p := gogc(t)
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("GC percent still %d after 5 s of collections", p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartRaisesThePercentAndStopRestoresIt(t *testing.T) {
	unsetenv(t, "GOGC")
	before := gogc(t)
	stop, ok := Start(64 << 20)
	if !ok {
		t.Fatal("Start refused with GOGC unset")
	}
	// The test binary's live heap is far under 64 MiB: the percent is the
	// cap, 1600, within an eighth.
	p := waitPercent(t, func(p uint64) bool { return p >= 1400 })
	if p > 1600 {
		t.Fatalf("GC percent %d, above the cap 1600", p)
	}
	if _, again := Start(64 << 20); again {
		t.Fatal("a second Start ran beside the first")
	}
	// The tuner follows the live heap: hold 24 MiB and the percent falls
	// to 64/24-1 = 166% (or less, as the test's own heap adds to it).
	hold := make([][]byte, 24)
	for i := range hold {
		hold[i] = make([]byte, 1<<20)
	}
	p = waitPercent(t, func(p uint64) bool { return p <= 200 })
	if p < 100 {
		t.Fatalf("GC percent %d, below 100", p)
	}
	runtime.KeepAlive(hold)
	stop()
	if got := gogc(t); got != before {
		t.Fatalf("after stop the GC percent is %d, want %d as before Start", got, before)
	}
	stop() // twice is harmless
	// After stop, collections no longer change it.
	runtime.GC()
	runtime.GC()
	time.Sleep(20 * time.Millisecond)
	if got := gogc(t); got != before {
		t.Fatalf("a collection after stop set the percent to %d", got)
	}
	stop2, ok := Start(64 << 20)
	if !ok {
		t.Fatal("Start refused after the first was stopped")
	}
	stop2()
}

func TestGOGCInTheEnvironmentWins(t *testing.T) {
	t.Setenv("GOGC", "100")
	before := gogc(t)
	if _, ok := Start(64 << 20); ok {
		t.Fatal("Start ran with GOGC set")
	}
	runtime.GC()
	time.Sleep(20 * time.Millisecond)
	if got := gogc(t); got != before {
		t.Fatalf("GC percent %d, want %d untouched", got, before)
	}
}
