// Command sluice is a traffic-shaping buffer proxy: it accepts bursts of HTTP
// requests, stores each durably, answers 202, and replays them to slow
// downstream systems at the rate they can take.
//
//	sluice serve --policy policy.yaml   run the proxy
//	sluice check --policy policy.yaml   validate a policy file
//	sluice demo                         a burst, a slow downstream and the drain, in one process
//	sluice loadtest run|downstream      offer load and verify delivery; or a mock downstream
//	sluice inspect --data DIR           report on a data directory offline
//	sluice dlq list|show|replay|purge   dead letters, with the server stopped
//	sluice ctl routes|pause|resume|rate|dead|counts|replay|reload   a running server, through its admin API
//	sluice reconcile                    compare a downstream's list with what was delivered to it
//	sluice version                      print the version
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `sluice: a traffic-shaping buffer proxy

Usage:
  sluice serve --policy FILE     run the proxy on a policy file
  sluice check --policy FILE     validate a policy file; print every problem with file:line
  sluice demo [flags]            burst -> sluice -> slow downstream, in one process, with a report
  sluice loadtest run|downstream offer load to a proxy and verify delivery; or run a mock downstream
  sluice inspect --data DIR      report on a data directory offline (--verify checks every record)
  sluice dlq list|show|replay|purge --policy FILE ...   dead letters (server stopped)
  sluice ctl [--admin URL] COMMAND  a running server, through its admin API: routes, pause, resume, rate, dead, counts, replay, reload
  sluice reconcile --route R --target T --received FILE|URL   compare a downstream's list with what was delivered to it
  sluice version                 print the version

Run 'sluice COMMAND -h' for the flags of a command.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "loadtest":
		return cmdLoadtest(args[1:], stdout, stderr)
	case "inspect":
		return cmdInspect(args[1:], stdout, stderr)
	case "dlq":
		return cmdDlq(args[1:], stdout, stderr)
	case "ctl":
		return cmdCtl(args[1:], stdout, stderr)
	case "reconcile":
		return cmdReconcile(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "sluice", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		if v != "" {
			return v
		}
	}
	return "(devel)"
}
