package testutil

import (
	"runtime/metrics"
	"time"
)

// GCCPUTime is the CPU time the garbage collector has used in this process
// so far (runtime/metrics' /cpu/classes/gc/total, an estimate the runtime
// keeps: marking, assists and pauses), or 0 where it is not reported.
func GCCPUTime() time.Duration {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}
