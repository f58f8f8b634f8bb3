package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// lockFile is the name of the data directory's lock: a running sluice
// holds it (flock, exclusive) for as long as it has the store open, with
// its process id written in it, so that a second serve, or an offline
// inspect or dlq, is told who holds the directory instead of waiting for
// bbolt's file lock to time out.
const lockFile = "sluice.lock"

// errHeld is returned when another process holds the data directory.
var errHeld = errors.New("held by a running sluice")

// dirLock is a held lock on a data directory.
type dirLock struct{ f *os.File }

// lockDir takes the lock of the data directory dir, creating dir if
// needed. It does not wait: a directory held by another process is an
// error naming that process.
func lockDir(dir string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	if err := flock(f); err != nil {
		pid := "?"
		if b, rerr := os.ReadFile(path); rerr == nil && strings.TrimSpace(string(b)) != "" {
			pid = strings.TrimSpace(string(b))
		}
		f.Close()
		if errors.Is(err, errWouldBlock) {
			return nil, fmt.Errorf("data directory %s is %w (pid %s): stop it first, or reach it through its admin API (sluice ctl)", dir, errHeld, pid)
		}
		return nil, fmt.Errorf("data directory lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f: f}, nil
}

// release gives the lock back. The file stays (removing it would race with
// a process taking it).
func (l *dirLock) release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	funlock(l.f)
	l.f.Close()
	l.f = nil
}
