// Package testutil holds what the tests of several packages share: a child
// process of the test binary for a test to kill (the crash tests), and the
// process's CPU time (the benchmarks' CPU per message). It is imported by
// _test files only; nothing in it is part of sluice.
package testutil

import (
	"bufio"
	"os"
	"os/exec"
	"testing"
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
