package policies

import "time"

// WithDefaults returns t with every unset field that has a default given
// the default a policy file gets for it (DefaultConcurrency, DefaultTimeout,
// the burst of its rate, UTC, defaultRetry, defaultBreaker, the adaptive
// decrease). A parsed policy's targets have them already; this is for a
// Target built in code (tests, benchmarks, the demo), so that the defaults
// live here only and the drainers consume the result.
func (t Target) WithDefaults() Target {
	if t.Concurrency <= 0 {
		t.Concurrency = DefaultConcurrency
	}
	if t.Timeout <= 0 {
		t.Timeout = DefaultTimeout
	}
	if t.Burst <= 0 {
		t.Burst = defaultBurst(t.Rate)
	}
	if t.Timezone == nil {
		t.Timezone = time.UTC
	}
	def := defaultRetry()
	if t.Retry.MaxAttempts <= 0 {
		t.Retry.MaxAttempts = def.MaxAttempts
	}
	if t.Retry.Initial <= 0 {
		t.Retry.Initial = def.Initial
	}
	if t.Retry.Max <= 0 {
		t.Retry.Max = def.Max
	}
	t.Retry.Max = max(t.Retry.Max, t.Retry.Initial)
	if on := t.Retry.On; on.Codes == nil && !on.Class4xx && !on.Class5xx && !on.Timeout && !on.Connect {
		t.Retry.On = def.On
	}
	b := defaultBreaker()
	if t.Breaker.Failures <= 0 {
		t.Breaker.Failures = b.Failures
	}
	if t.Breaker.Cooldown <= 0 {
		t.Breaker.Cooldown = b.Cooldown
	}
	if t.Breaker.MaxCooldown <= 0 {
		t.Breaker.MaxCooldown = b.MaxCooldown
	}
	t.Breaker.MaxCooldown = max(t.Breaker.MaxCooldown, t.Breaker.Cooldown)
	if a := t.Adaptive; a != nil && a.Decrease == 0 {
		ac := *a
		ac.Decrease = DefaultAdaptiveDecrease
		t.Adaptive = &ac
	}
	return t
}
