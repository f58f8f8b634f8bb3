// Package testutil holds what the tests of several packages share: a child
// process of the test binary for a test to kill (the crash tests), the
// process's CPU time (the benchmarks' CPU per message), Must, WaitFor, a
// Buffer safe for concurrent use, a recording fake upstream server
// (StartUpstream, Serve), and Untar (a data directory kept in testdata).
// It is imported by _test files only; nothing in it is part of sluice.
package testutil

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Child starts the running test binary again, running only the test
// named, with env (KEY=VALUE) added to this process's environment. Its
// standard error is this process's; its standard output is returned as a
// scanner. The caller kills and waits for it. The child knows it is one by
// a variable in env that the test looks at first.
func Child(t testing.TB, test string, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}

// Must fails the test at once if err is not nil.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// WaitFor polls cond every 5 ms until it holds, and fails the test, saying
// what it waited for, if timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Buffer is a bytes.Buffer that several goroutines may write to and read
// from (a log handler's output, say).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
