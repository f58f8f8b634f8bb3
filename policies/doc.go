// Package policies reads sluice policy files: the YAML that says where sluice listens, how
// it stores accepted requests, and which routes buffer requests for which downstream
// targets, at what rate, in which time windows, with what retries.
//
// It is plain data plus parsing and validation, and imports nothing else from sluice.
//
// # Guarantees
//
// A *Policy returned without error is fully defaulted and validated: every field holds a
// usable value (the defaults are documented on the fields), names are unique where they
// must be, every URL is an absolute http or https URL, and every target has Burst >= 1,
// Concurrency >= 1 and a Timezone. An admin listener that other hosts can reach has a
// token (IsLoopback says which addresses are local), and is never the public listener's
// address. Callers need not check again.
//
// On failure Load and Parse return *Errors, which lists every problem found, not only the
// first. Each problem carries the file, the line (1-based) and the field path, such as
// "routes[0].targets[1].rate", and says what is expected:
//
//	policy.yaml:12: routes[0].targets[1].rate: invalid rate "fast": expected N/s, N/m, N/h, 0 or unlimited
//
// # The file
//
// Keys not in the schema are errors, so a misspelt key never silently falls back to a
// default. ${VAR} and ${VAR:-default} in values are expanded from the environment before
// they are read (an unset VAR without a default is an error; $${ is a literal ${). A value
// that is null or expands to an empty string counts as not set. YAML anchors, aliases and
// merge keys (<<: *defaults) may be used to share settings.
//
// # Time windows
//
// Target.RateAt and Target.NextChange take the instant they are asked about, so schedules
// are tested without sleeping. Windows are read on the wall clock of the target's time
// zone; NextChange finds the exact instant of the next change, across daylight saving
// transitions too. Timezone names resolve with the Go time zone database embedded in the
// binary (time/tzdata), so they work where the host has none.
//
// # Costs
//
// Parsing is linear in the size of the file with aliases expanded; documents that expand
// to more than about a million nodes are refused.
package policies
