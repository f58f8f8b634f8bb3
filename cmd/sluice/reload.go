package main

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/admin"
	"github.com/sluice-proxy/sluice/drain"
	"github.com/sluice-proxy/sluice/policies"
)

// Reload (SIGHUP, POST /v1/reload).
//
// The policy file is parsed and validated whole; with any error the running
// policy stays and the errors (file:line) are logged and returned. A valid
// policy is applied:
//   - routes are swapped atomically in the proxy (no request is refused for
//     the swap): new routes start matching, changed matches, limits and
//     passthrough settings apply to the next request;
//   - a new buffer or spillover route gets its queue and drainers;
//   - a target whose settings changed (rate, windows, retry, concurrency,
//     ...) gets a new drainer: the old one stops fetching, its attempts in
//     flight finish and are recorded, then the new one starts on the same
//     cursor (nothing is dropped or sent twice; the target pauses for as
//     long as its slowest attempt in flight). Operators' pauses and rates
//     are applied to it before it starts;
//   - a removed buffer or spillover route stops matching (404 no_route); its
//     stored messages stay and its drainers keep delivering them; status
//     lookups still find them; it shows as retired in the state;
//   - changes of listen, admin, server, storage and default_upstream need a
//     restart: they are named in the result and the running values stay.
//
// Refused, with the running policy kept: adding or removing targets of an
// existing buffer route, or changing a route's mode to or from buffer or
// spillover (the queue's targets are fixed while it is open), and adding
// the first or removing the last passthrough route (whether request bodies
// are streamed is fixed when the listener starts).

// reloadAPI implements admin.Reloader.
func (n *node) reloadAPI(ctx context.Context) (admin.ReloadResult, error) { return n.doReload() }

// doReload reloads the policy; see above.
func (n *node) doReload() (admin.ReloadResult, error) {
	if n.reload == nil {
		return admin.ReloadResult{}, errors.New("reload is not available: this node was not started from a policy file")
	}
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	if n.stopping.Load() {
		return admin.ReloadResult{}, errors.New("shutting down")
	}
	next, err := n.reload()
	if err != nil {
		n.log.Error("reload: the policy has errors; the running policy stays in force", "err", err)
		return admin.ReloadResult{}, err
	}
	n.mu.Lock()
	cur := n.pol
	n.mu.Unlock()
	res, eff, err := n.plan(cur, next)
	if err != nil {
		n.log.Error("reload: refused; the running policy stays in force", "err", err)
		return admin.ReloadResult{}, err
	}
	if err := n.apply(cur, eff, &res); err != nil {
		n.log.Error("reload: failed part way", "err", err, "changes", strings.Join(res.Changes, "; "))
		return res, err
	}
	if len(res.Changes) == 0 {
		res.Changes = []string{}
	}
	if res.RestartNeeded == nil {
		res.RestartNeeded = []string{}
	}
	n.log.Info("policy reloaded", "file", eff.File, "changes", strings.Join(res.Changes, "; "), "restart_needed", strings.Join(res.RestartNeeded, "; "))
	return res, nil
}

// plan checks that next can replace cur in a running node and returns the
// policy to apply: next, with the settings that need a restart kept as they
// are.
func (n *node) plan(cur, next *policies.Policy) (admin.ReloadResult, *policies.Policy, error) {
	var res admin.ReloadResult
	eff := *next
	keep := func(name string, changed bool) {
		if changed {
			res.RestartNeeded = append(res.RestartNeeded, name+" changed: takes effect at the next restart")
		}
	}
	keep("listen", cur.Listen != next.Listen)
	keep("admin", !reflect.DeepEqual(withoutLines(cur.Admin), withoutLines(next.Admin)))
	keep("server", !reflect.DeepEqual(withoutLines(cur.Server), withoutLines(next.Server)))
	keep("storage", !reflect.DeepEqual(withoutLines(cur.Storage), withoutLines(next.Storage)))
	keep("default_upstream", fmt.Sprint(cur.DefaultUpstream) != fmt.Sprint(next.DefaultUpstream))
	eff.Listen, eff.Admin, eff.Server, eff.Storage, eff.DefaultUpstream = cur.Listen, cur.Admin, cur.Server, cur.Storage, cur.DefaultUpstream

	var errs []error
	if passes(cur) != passes(next) {
		errs = append(errs, errors.New("adding the first or removing the last passthrough route needs a restart (request bodies are streamed only when the listener starts with one)"))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range next.Routes {
		queued := r.Mode == policies.ModeBuffer || r.Mode == policies.ModeSpillover
		var oldMode string
		var oldTargets []string
		for k, run := range n.runs {
			if k.route == r.Name {
				oldMode = run.route.Mode
				oldTargets = append(oldTargets, k.target)
			}
		}
		if oldMode == "" {
			continue // a new route, or a passthrough one
		}
		if !queued || (oldMode != r.Mode) {
			errs = append(errs, fmt.Errorf("%s:%d: route %q: changing its mode from %s to %s needs a restart", next.File, r.Line, r.Name, oldMode, r.Mode))
			continue
		}
		var names []string
		for _, t := range r.Targets {
			names = append(names, t.Name)
		}
		slices.Sort(names)
		slices.Sort(oldTargets)
		if !slices.Equal(names, oldTargets) {
			errs = append(errs, fmt.Errorf("%s:%d: route %q: adding or removing targets needs a restart (targets now: %s; in the file: %s)",
				next.File, r.Line, r.Name, strings.Join(oldTargets, ", "), strings.Join(names, ", ")))
		}
	}
	return res, &eff, errors.Join(errs...)
}

func passes(p *policies.Policy) bool {
	if p.DefaultUpstream != nil {
		return true
	}
	for _, r := range p.Routes {
		if r.Mode == policies.ModePassthrough {
			return true
		}
	}
	return false
}

// apply makes eff the policy in force; plan has checked it.
func (n *node) apply(cur, eff *policies.Policy, res *admin.ReloadResult) error {
	curRoutes := map[string]policies.Route{}
	for _, r := range cur.Routes {
		curRoutes[r.Name] = r
	}
	nextRoutes := map[string]bool{}
	for _, r := range eff.Routes {
		nextRoutes[r.Name] = true
		old, ok := curRoutes[r.Name]
		switch {
		case !ok:
			res.Changes = append(res.Changes, fmt.Sprintf("route %q added (%s)", r.Name, r.Mode))
		default:
			if d := diffFields(old, r, "Targets"); len(d) > 0 {
				res.Changes = append(res.Changes, fmt.Sprintf("route %q: %s changed", r.Name, strings.Join(d, ", ")))
			}
		}
	}
	for _, r := range cur.Routes {
		if !nextRoutes[r.Name] {
			what := "stops accepting (404 no_route)"
			if r.Mode != policies.ModePassthrough {
				what += "; its stored messages are kept and still delivered"
			}
			res.Changes = append(res.Changes, fmt.Sprintf("route %q removed: %s", r.Name, what))
		}
	}
	// Queues first (new routes' are opened; open ones are reused), then
	// the new drainers, then the proxy's routes.
	qs, err := openQueues(n.store, eff)
	if err != nil {
		return err
	}
	n.mu.Lock()
	for name, q := range qs {
		n.queues[name] = q
	}
	n.mu.Unlock()

	// Drainers: new ones for new targets and changed ones.
	var fresh, replaced []*targetRun
	var olds []*targetRun
	for _, r := range eff.Routes {
		if r.Mode != policies.ModeBuffer && r.Mode != policies.ModeSpillover {
			continue
		}
		for _, t := range r.Targets {
			key := runKey{r.Name, t.Name}
			n.mu.Lock()
			old := n.runs[key]
			n.mu.Unlock()
			if old != nil && !old.retired && reflect.DeepEqual(withoutLines(old.target), withoutLines(t)) &&
				old.route.CallbackHeader == r.CallbackHeader && reflect.DeepEqual(withoutLines(old.route.Callbacks), withoutLines(r.Callbacks)) {
				continue // unchanged: the drainer runs on (its route and target never change)
			}
			run, err := n.newRun(r, t, drain.Stats{})
			if err != nil {
				return err
			}
			if old == nil {
				res.Changes = append(res.Changes, fmt.Sprintf("route %q: target %q started", r.Name, t.Name))
				fresh = append(fresh, run)
				continue
			}
			if d := diffFields(old.target, t); len(d) > 0 {
				res.Changes = append(res.Changes, fmt.Sprintf("route %q: target %q: %s changed", r.Name, t.Name, strings.Join(d, ", ")))
			}
			if old.retired {
				res.Changes = append(res.Changes, fmt.Sprintf("route %q: target %q accepts again", r.Name, t.Name))
			}
			replaced = append(replaced, run)
			olds = append(olds, old)
		}
	}
	// Every drainer is built: nothing can fail from here on but the swap
	// of routes, which only builds them from the policy and queues above.
	if err := n.proxy.SetRoutes(eff, contract(qs)); err != nil {
		return err
	}
	// Stop the drainers being replaced: their attempts in flight finish
	// and are recorded before the new ones fetch.
	for _, old := range olds {
		old.cancel()
	}
	for i, old := range olds {
		<-old.done
		replaced[i].base = addStats(old.base, old.d.Stats())
	}
	n.mu.Lock()
	for _, run := range append(fresh, replaced...) {
		n.runs[runKey{run.route.Name, run.target.Name}] = run
	}
	for k, run := range n.runs {
		if !nextRoutes[k.route] && !run.retired {
			run.retired = true
		}
	}
	n.pol = eff
	n.mu.Unlock()
	// Operators' pauses and rates apply before the new drainers run.
	if err := n.controls.Attach(n); err != nil {
		n.log.Error("reload: operator controls", "err", err)
	}
	for _, run := range append(fresh, replaced...) {
		n.start(run)
	}
	return nil
}

// addStats adds the counters of b to a.
func addStats(a, b drain.Stats) drain.Stats {
	a.Delivered += b.Delivered
	a.Retried += b.Retried
	a.Dead += b.Dead
	a.Attempts += b.Attempts
	a.Forwarded += b.Forwarded
	a.ForwardFailed += b.ForwardFailed
	for i := range a.ByClass {
		for j := range a.ByClass[i] {
			a.ByClass[i][j] += b.ByClass[i][j]
		}
	}
	return a
}

// diffFields names the exported fields of two structs of the same type that
// differ, in policy-file terms where the name is plain (Rate -> rate).
// Line fields and the fields named in skip are left out.
func diffFields(a, b any, skip ...string) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := range va.NumField() {
		f := va.Type().Field(i)
		if !f.IsExported() || f.Name == "Line" || slices.Contains(skip, f.Name) {
			continue
		}
		if !reflect.DeepEqual(withoutLines(va.Field(i).Interface()), withoutLines(vb.Field(i).Interface())) {
			out = append(out, snake(f.Name))
		}
	}
	return out
}

// withoutLines returns v with every Line field zeroed, recursively, so that
// moving a block in the file is not a change.
func withoutLines(v any) any {
	if v == nil {
		return nil
	}
	rv := reflect.ValueOf(v)
	cp := reflect.New(rv.Type()).Elem()
	cp.Set(rv)
	zeroLines(cp)
	return cp.Interface()
}

// locations keeps one *time.Location per name, so that two loads of the
// same time zone compare equal.
var locations sync.Map

func zeroLines(v reflect.Value) {
	if loc, ok := v.Interface().(*time.Location); ok {
		if loc != nil && v.CanSet() {
			l, _ := locations.LoadOrStore(loc.String(), loc)
			v.Set(reflect.ValueOf(l.(*time.Location)))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() && v.Elem().Kind() == reflect.Struct {
			cp := reflect.New(v.Elem().Type())
			cp.Elem().Set(v.Elem())
			zeroLines(cp.Elem())
			v.Set(cp)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Field(i)
			if !f.CanSet() {
				continue
			}
			if v.Type().Field(i).Name == "Line" && f.Kind() == reflect.Int {
				f.SetInt(0)
				continue
			}
			zeroLines(f)
		}
	case reflect.Slice:
		if v.IsNil() {
			return
		}
		cp := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(cp, v)
		for i := range cp.Len() {
			zeroLines(cp.Index(i))
		}
		v.Set(cp)
	}
}

// snake turns a Go field name into the policy key: MaxAttempts -> max_attempts.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 && !(s[i-1] >= 'A' && s[i-1] <= 'Z') {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
