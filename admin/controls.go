package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/policies"
)

// ControlsFile is the name of the operator controls file in the data
// directory.
const ControlsFile = "controls.json"

// Target is what an operator controls on a running target; *drain.Drainer
// implements it.
type Target interface {
	Pause()
	Resume()
	SetRate(policies.Rate)
	ResetRate()
}

// Targets finds a running target by route and target name.
type Targets interface {
	Target(route, target string) (Target, bool)
}

// Override is an operator's control of one target, as kept in the controls
// file: a pause, a rate, or both, each with an optional end.
type Override struct {
	Route  string `json:"route"`
	Target string `json:"target"`

	Paused      bool      `json:"paused,omitempty"`
	PausedUntil time.Time `json:"paused_until,omitzero"` // zero: until resumed
	PausedAt    time.Time `json:"paused_at,omitzero"`

	Rate      string    `json:"rate,omitempty"` // as the operator wrote it ("100/s"); "" = the policy's
	RateUntil time.Time `json:"rate_until,omitzero"`
	RateAt    time.Time `json:"rate_at,omitzero"`
}

func (o *Override) empty() bool { return !o.Paused && o.Rate == "" }

// Controls holds the operators' pauses and rates and keeps them in a file
// in the data directory, so that a restart does not silently resume
// delivery to a downstream that asked to be left alone. Every change is
// written (temporary file, fsync, rename, fsync of the directory) before it
// is applied: a change that returned nil survives a crash; one that
// returned an error was not applied. The file is small (one entry per
// controlled target) and written only on an operator's action or when an
// override ends.
type Controls struct {
	path string
	now  func() time.Time
	log  *slog.Logger

	mu      sync.Mutex
	entries map[[2]string]*Override
	targets Targets
}

type controlsFile struct {
	Version   int        `json:"version"`
	Overrides []Override `json:"overrides"`
}

// OpenControls reads the controls file in dir (none yet is no override).
// A file that cannot be parsed is an error: starting without it would
// resume targets an operator paused.
func OpenControls(dir string, now func() time.Time, log *slog.Logger) (*Controls, error) {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	c := &Controls{path: filepath.Join(dir, ControlsFile), now: now, log: log, entries: map[[2]string]*Override{}}
	data, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("operator controls: %w", err)
	}
	var f controlsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("operator controls: %s: %v (fix or remove the file; it holds the operators' pauses and rates)", c.path, err)
	}
	for _, o := range f.Overrides {
		if o.Rate != "" {
			if _, err := policies.ParseRate(o.Rate); err != nil {
				return nil, fmt.Errorf("operator controls: %s: route %q: target %q: %v", c.path, o.Route, o.Target, err)
			}
		}
		o := o
		c.entries[[2]string{o.Route, o.Target}] = &o
	}
	return c, nil
}

// Attach applies every override in force to the targets ts finds and
// remembers ts for later changes. Call it at start-up and after a reload
// started new targets. Overrides whose end has passed are dropped.
func (c *Controls) Attach(ts Targets) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.targets = ts
	expired := c.expireLocked()
	for _, o := range c.entries {
		t, ok := ts.Target(o.Route, o.Target)
		if !ok {
			continue // a target the policy no longer has: kept until it comes back or is resumed
		}
		apply(t, o)
	}
	if expired {
		return c.saveLocked()
	}
	return nil
}

func apply(t Target, o *Override) {
	if o.Paused {
		t.Pause()
	} else {
		t.Resume()
	}
	if r, err := policies.ParseRate(o.Rate); o.Rate != "" && err == nil {
		t.SetRate(r)
	} else {
		t.ResetRate()
	}
}

// Get returns the override of a target, if any.
func (c *Controls) Get(route, target string) (Override, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.entries[[2]string{route, target}]
	if !ok {
		return Override{}, false
	}
	return *o, true
}

// ErrNoTarget is returned for a route or target that is not running.
var ErrNoTarget = errors.New("no such route or target")

// ErrUnsupported is returned for a call the route's storage engine cannot
// serve (a queue that does not list, count or replay): 501 not_supported.
var ErrUnsupported = errors.New("not supported by the storage engine")

// change edits the override of a target, writes the file and applies it.
func (c *Controls) change(route, target string, edit func(o *Override)) (Override, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.targets == nil {
		return Override{}, ErrNoTarget
	}
	t, ok := c.targets.Target(route, target)
	if !ok {
		return Override{}, fmt.Errorf("%w: route %q, target %q", ErrNoTarget, route, target)
	}
	key := [2]string{route, target}
	prev, had := c.entries[key]
	o := Override{Route: route, Target: target}
	if had {
		o = *prev
	}
	edit(&o)
	if o.empty() {
		delete(c.entries, key)
	} else {
		c.entries[key] = &o
	}
	if err := c.saveLocked(); err != nil {
		if had {
			c.entries[key] = prev
		} else {
			delete(c.entries, key)
		}
		return Override{}, err
	}
	apply(t, &o)
	return o, nil
}

// Pause pauses a target until resumed, or until until if it is not zero.
func (c *Controls) Pause(route, target string, until time.Time) (Override, error) {
	now := c.now()
	if !until.IsZero() && !until.After(now) {
		return Override{}, fmt.Errorf("until %s is not in the future", until.Format(time.RFC3339))
	}
	return c.change(route, target, func(o *Override) {
		o.Paused, o.PausedUntil, o.PausedAt = true, until, now
	})
}

// Resume ends an operator's pause.
func (c *Controls) Resume(route, target string) (Override, error) {
	return c.change(route, target, func(o *Override) {
		o.Paused, o.PausedUntil, o.PausedAt = false, time.Time{}, time.Time{}
	})
}

// SetRate sets a target's base rate (the rate outside its windows) until
// ResetRate, or until until if it is not zero. rate is parsed as in a
// policy file ("100/s", "0", "unlimited").
func (c *Controls) SetRate(route, target, rate string, until time.Time) (Override, error) {
	if _, err := policies.ParseRate(rate); err != nil {
		return Override{}, errors.New(`invalid rate: expected N/s, N/m, N/h, 0 (paused), unlimited, or "policy"`)
	}
	now := c.now()
	if !until.IsZero() && !until.After(now) {
		return Override{}, fmt.Errorf("until %s is not in the future", until.Format(time.RFC3339))
	}
	return c.change(route, target, func(o *Override) {
		o.Rate, o.RateUntil, o.RateAt = rate, until, now
	})
}

// ResetRate gives a target back the policy's rate.
func (c *Controls) ResetRate(route, target string) (Override, error) {
	return c.change(route, target, func(o *Override) {
		o.Rate, o.RateUntil, o.RateAt = "", time.Time{}, time.Time{}
	})
}

// Expire ends the overrides whose time has come; Run calls it. It returns
// the next end to wait for (zero if none).
func (c *Controls) Expire() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expireLocked() {
		if err := c.saveLocked(); err != nil {
			c.log.Error("operator controls: cannot save after an override ended", "err", err)
		}
	}
	var next time.Time
	for _, o := range c.entries {
		for _, u := range []time.Time{o.PausedUntil, o.RateUntil} {
			if !u.IsZero() && (next.IsZero() || u.Before(next)) {
				next = u
			}
		}
	}
	return next
}

// expireLocked drops ended overrides, applying the change to their targets;
// it reports whether anything changed.
func (c *Controls) expireLocked() bool {
	now := c.now()
	changed := false
	for key, o := range c.entries {
		ended := false
		if o.Paused && !o.PausedUntil.IsZero() && !now.Before(o.PausedUntil) {
			o.Paused, o.PausedUntil, o.PausedAt = false, time.Time{}, time.Time{}
			ended = true
			c.log.Info("operator pause ended", "route", o.Route, "target", o.Target)
		}
		if o.Rate != "" && !o.RateUntil.IsZero() && !now.Before(o.RateUntil) {
			o.Rate, o.RateUntil, o.RateAt = "", time.Time{}, time.Time{}
			ended = true
			c.log.Info("operator rate ended", "route", o.Route, "target", o.Target)
		}
		if !ended {
			continue
		}
		changed = true
		if c.targets != nil {
			if t, ok := c.targets.Target(o.Route, o.Target); ok {
				apply(t, o)
			}
		}
		if o.empty() {
			delete(c.entries, key)
		}
	}
	return changed
}

// Run ends overrides when their time comes, until stop is closed.
func (c *Controls) Run(stop <-chan struct{}) {
	for {
		wait := time.Second
		if next := c.Expire(); !next.IsZero() {
			wait = min(wait, max(next.Sub(c.now()), 10*time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// saveLocked writes the file atomically: a temporary file, fsync, rename,
// fsync of the directory.
func (c *Controls) saveLocked() error {
	f := controlsFile{Version: 1, Overrides: []Override{}}
	for _, o := range c.entries {
		f.Overrides = append(f.Overrides, *o)
	}
	sort.Slice(f.Overrides, func(i, j int) bool {
		a, b := f.Overrides[i], f.Overrides[j]
		return a.Route < b.Route || (a.Route == b.Route && a.Target < b.Target)
	})
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(c.path, append(data, '\n')); err != nil {
		return fmt.Errorf("operator controls: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}
