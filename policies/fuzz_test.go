package policies

import (
	"errors"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParse checks that Parse never panics, that every failure is a non-empty *Errors
// whose entries name the file and a line inside it, and that every policy it accepts
// keeps the promises of the package doc.
//
// The seed corpus is testdata/valid, testdata/invalid, the example policy and
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	seeds = append(seeds, "../examples/policy.yaml")
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseWith("fuzz.yaml", data, testEnv)
		if err != nil {
			if p != nil {
				t.Fatal("policy returned along with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) || len(*errs) == 0 {
				t.Fatalf("error is %T %v, want non-empty *Errors", err, err)
			}
			lines := yamlLines(data)
			for _, e := range *errs {
				if e.File != "fuzz.yaml" || e.Msg == "" || e.Line < 0 || e.Line > lines+1 {
					t.Fatalf("bad error %#v in a %d-line file", e, lines)
				}
			}
			return
		}
		checkInvariants(t, p)
	})
}

// yamlLines counts lines as YAML does: CR, LF, CRLF, NEL, LS and PS all end one.
func yamlLines(data []byte) int {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	n := 1
	for _, r := range s {
		switch r {
		case '\r', '\n', '\u0085', '\u2028', '\u2029':
			n++
		}
	}
	return n
}

// checkInvariants fails t unless p keeps every promise of a validated policy.
func checkInvariants(t *testing.T, p *Policy) {
	t.Helper()
	if p == nil {
		t.Fatal("nil policy without error")
	}
	check := func(ok bool, what string, args ...any) {
		t.Helper()
		if !ok {
			t.Fatalf("invariant broken: "+what, args...)
		}
	}
	s := p.Storage
	check(p.Listen != "", "empty listen")
	check(s.Engine == EngineBbolt && s.JetStream == nil || s.Engine == EngineJetStream && s.JetStream != nil, "engine %q with jetstream %+v", s.Engine, s.JetStream)
	if j := s.JetStream; j != nil {
		check(j.Replicas == 1 || (j.Replicas == 3 || j.Replicas == 5) && len(j.URLs) > 0, "replicas %d with %d urls", j.Replicas, len(j.URLs))
		check(j.StreamPrefix != "" && j.LeaseTTL >= MinLeaseTTL && j.LeaseTTL <= MaxLeaseTTL, "jetstream %+v", j)
		check(j.Credentials == "" || j.NKey == "", "credentials and nkey")
		check(s.Fsync.Mode == FsyncAlways, "fsync %v with jetstream", s.Fsync)
	}
	check(s.Dir != "", "empty dir")
	check(s.Retention > 0, "retention %v", s.Retention)
	check(s.MaxBytes >= 0 && s.MinFreeBytes >= 0, "negative sizes %d %d", s.MaxBytes, s.MinFreeBytes)
	check(s.SegmentBytes >= MinSegmentBytes && s.SegmentBytes <= MaxSegmentBytes, "segment_bytes %d", s.SegmentBytes)
	check((s.Fsync.Mode == FsyncInterval) == (s.Fsync.Interval > 0), "fsync %+v", s.Fsync)
	check(s.Fsync.Mode >= FsyncAlways && s.Fsync.Mode <= FsyncNever, "fsync mode %d", s.Fsync.Mode)
	check(len(p.Routes) > 0, "no routes")
	sv := p.Server
	check(sv.ReadTimeout > 0 && sv.WriteTimeout > 0 && sv.IdleTimeout > 0, "server timeouts %+v", sv)
	check(sv.MaxHeaderBytes >= MinHeaderBytes && sv.MaxHeaderBytes <= MaxHeaderBytes, "max_header_bytes %d", sv.MaxHeaderBytes)
	check(sv.MaxConnections >= 1 && sv.MaxConnections <= MaxConnections, "max_connections %d", sv.MaxConnections)
	check(sv.TLS == nil || sv.TLS.Cert != "" && sv.TLS.Key != "", "tls %+v", sv.TLS)
	if p.DefaultUpstream != nil {
		checkURL(t, p.DefaultUpstream)
	}

	routes := map[string]bool{}
	for _, r := range p.Routes {
		check(namePattern.MatchString(r.Name) && !routes[r.Name], "route name %q", r.Name)
		routes[r.Name] = true
		check(strings.HasPrefix(r.Match.Path, "/"), "route %s: path %q", r.Name, r.Match.Path)
		for _, m := range r.Match.Methods {
			check(m != "" && m == strings.ToUpper(m), "route %s: method %q", r.Name, m)
		}
		check(r.MaxBody > 0 && (r.MaxBody <= MaxBodyLimit || r.Mode == ModePassthrough), "route %s: max_body %d", r.Name, r.MaxBody)
		check(r.Line > 0, "route %s: line %d", r.Name, r.Line)
		check(r.Match.Host == strings.ToLower(r.Match.Host) && !strings.Contains(strings.TrimPrefix(r.Match.Host, "*."), "*"), "route %s: host %q", r.Name, r.Match.Host)
		check(r.Burst >= 1 && r.MaxWait >= 0 && (r.Rate.Unlimited || r.Rate.PerSecond >= 0), "route %s: rate %v burst %d max_wait %v", r.Name, r.Rate, r.Burst, r.MaxWait)
		switch r.Mode {
		case ModePassthrough:
			check(r.Upstream != nil && len(r.Targets) == 0 && r.IdempotencyHeader == "", "passthrough route %s: %+v", r.Name, r)
			checkURL(t, r.Upstream)
		case ModeBuffer:
			check(r.Upstream == nil && len(r.Targets) > 0, "buffer route %s: %+v", r.Name, r)
		case ModeSpillover:
			check(r.Upstream == nil && len(r.Targets) == 1 && r.Targets[0].Batch == nil, "spillover route %s: %+v", r.Name, r)
		default:
			t.Fatalf("route %s: mode %q", r.Name, r.Mode)
		}
		check(r.CallbackHeader == "" || r.Callbacks != nil && len(r.Callbacks.Allow) > 0, "route %s: callback_header %q without an allow-list", r.Name, r.CallbackHeader)
		if r.Callbacks != nil {
			for _, a := range r.Callbacks.Allow {
				u, err := url.Parse(a)
				check(err == nil && u.User == nil && strings.HasPrefix(u.Path, "/") && u.RawQuery == "", "route %s: callback prefix %q", r.Name, a)
			}
		}
		targets := map[string]bool{}
		for i := range r.Targets {
			tg := &r.Targets[i]
			check(namePattern.MatchString(tg.Name) && !targets[tg.Name], "target name %q", tg.Name)
			targets[tg.Name] = true
			checkURL(t, tg.URL)
			checkRate(t, tg.Rate)
			check(tg.Burst >= 1, "target %s: burst %d", tg.Name, tg.Burst)
			check(tg.Concurrency >= 1 && tg.Concurrency <= MaxConcurrency, "target %s: concurrency %d", tg.Name, tg.Concurrency)
			check(tg.Timeout > 0, "target %s: timeout %v", tg.Name, tg.Timeout)
			check(tg.Timezone != nil, "target %s: nil timezone", tg.Name)
			check(tg.Line > 0, "target %s: line %d", tg.Name, tg.Line)
			if c := tg.CaptureResponse; c != nil {
				check(c.MaxBytes >= 1 && c.MaxBytes <= MaxCaptureBytes && tg.Batch == nil, "target %s: capture_response %+v", tg.Name, c)
			}
			rt := tg.Retry
			check(rt.MaxAttempts >= 1 && rt.Initial > 0 && rt.Max >= rt.Initial && rt.On.Codes != nil, "target %s: retry %+v", tg.Name, rt)
			for code := range rt.On.Codes {
				check(code >= 100 && code <= 599, "target %s: retry code %d", tg.Name, code)
			}
			if a := tg.Adaptive; a != nil {
				check(!a.MinRate.Unlimited && a.MinRate.PerSecond > 0 && !tg.Rate.Unlimited, "target %s: adaptive %+v with rate %v", tg.Name, a, tg.Rate)
				check(!a.Increase.Unlimited && a.Increase.PerSecond >= 0, "target %s: adaptive increase %v", tg.Name, a.Increase)
				check(a.Decrease > 0 && a.Decrease < 1 && a.Latency >= 0 && a.Line > 0, "target %s: adaptive %+v", tg.Name, a)
				checkRate(t, a.MinRate)
				checkRate(t, a.Increase)
			}
			bk := tg.Breaker
			check(bk.Failures >= 1 && bk.Failures <= MaxBreakerFails && bk.Cooldown > 0 && bk.MaxCooldown >= bk.Cooldown, "target %s: breaker %+v", tg.Name, bk)
			if b := tg.Batch; b != nil {
				check(b.MaxMessages >= 1 && b.MaxMessages <= MaxBatchMsgs && b.MaxBytes >= MinBatchBytes && b.MaxBytes <= MaxBodyLimit &&
					b.MaxWait > 0 && b.Format == FormatNDJSON && b.Line > 0, "target %s: batch %+v", tg.Name, b)
			}
			for _, w := range tg.Windows {
				checkRate(t, w.Rate)
				check(w.HasBetween || len(w.Days) > 0, "target %s: window at line %d always applies", tg.Name, w.Line)
				if w.HasBetween {
					check(w.From >= 0 && w.From < 1440 && w.To >= 0 && w.To < 1440 && w.From != w.To, "window %+v", w)
				}
				for _, d := range w.Days {
					check(d >= time.Sunday && d <= time.Saturday, "window day %d", d)
				}
			}
			// The schedule functions must answer for any target the parser accepts.
			now := time.Date(2025, 3, 30, 1, 30, 0, 0, time.UTC)
			checkRate(t, tg.RateAt(now))
			next := tg.NextChange(now)
			check(next.IsZero() == (len(tg.Windows) == 0), "target %s: NextChange %v with %d windows", tg.Name, next, len(tg.Windows))
			check(next.IsZero() || next.After(now), "target %s: NextChange %v not after %v", tg.Name, next, now)
		}
	}
}

func checkURL(t *testing.T, u *url.URL) {
	t.Helper()
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil || u.Fragment != "" {
		t.Fatalf("invariant broken: url %v", u)
	}
}

func checkRate(t *testing.T, r Rate) {
	t.Helper()
	if !r.Unlimited && (math.IsNaN(r.PerSecond) || r.PerSecond < 0 || r.PerSecond > MaxRate) {
		t.Fatalf("invariant broken: rate %+v", r)
	}
}
