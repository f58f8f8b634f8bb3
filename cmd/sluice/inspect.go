package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/sluice-proxy/sluice/buffer"
)

// cmdInspect reports on a data directory offline: segments, sizes, cursors,
// oldest message, outcome counts; with --verify every checksum.
func cmdInspect(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", "./data", "data directory (storage.dir of the policy)")
	verify := fs.Bool("verify", false, "check every record's checksum and bbolt's page structure")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if _, err := os.Stat(filepath.Join(*dir, "jetstream")); err == nil {
		fmt.Fprintf(stderr, "sluice inspect: %s holds an embedded JetStream store (storage.engine jetstream); inspect reads bbolt data only: use the admin API or the nats CLI (nats stream info)\n", *dir)
		return 1
	}
	if _, err := os.Stat(*dir); err == nil {
		lock, err := lockDir(*dir)
		if err != nil {
			fmt.Fprintln(stderr, "sluice inspect:", err)
			return 1
		}
		defer lock.release()
	}
	rep, err := buffer.Inspect(*dir, *verify)
	if err != nil {
		fmt.Fprintln(stderr, "sluice inspect:", err)
		return 1
	}
	damaged := 0
	for _, q := range rep.Queues {
		damaged += len(q.Damaged)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printInspect(stdout, rep, *verify)
	}
	if damaged > 0 {
		return 1
	}
	return 0
}

func printInspect(w io.Writer, rep *buffer.InspectReport, verify bool) {
	fmt.Fprintf(w, "data directory %s: %d queues\n", rep.Dir, len(rep.Queues))
	for _, q := range rep.Queues {
		fmt.Fprintf(w, "\nqueue %s: %d segments, %s on disk, %d messages (seq %d..%d)\n",
			q.Name, len(q.Segments), humanize.IBytes(uint64(q.Bytes)), q.Messages, q.FirstSeq, q.LastSeq)
		if q.Spares > 0 {
			fmt.Fprintf(w, "  spare logs: %d, %s (deleted segments' logs that new segments write over)\n", q.Spares, humanize.IBytes(uint64(q.SpareBytes)))
		}
		if !q.Oldest.IsZero() {
			fmt.Fprintf(w, "  oldest message: %s (%s ago)\n", q.Oldest.UTC().Format(time.RFC3339), time.Since(q.Oldest).Round(time.Second))
		}
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  segment\tfirst\tlast\tsize\tlast append\t")
		for _, s := range q.Segments {
			last := "-"
			if !s.LastAppend.IsZero() {
				last = s.LastAppend.UTC().Format(time.RFC3339)
			}
			status := ""
			if s.Error != "" {
				status = "DAMAGED: " + s.Error
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t%s\t%s\n", s.File, s.First, s.Last, humanize.IBytes(uint64(s.FileBytes)), last, status)
		}
		tw.Flush()
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		// accepted = delivered + dead + expired + purged + pending, as the
		// running server's GET .../counts and metrics count them.
		fmt.Fprintln(tw, "  target\tfloor\taccepted\tdelivered\tdead\texpired\tpurged\tpending\t(queued\tretrying\tparked)\t")
		for _, t := range q.Targets {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", t.Name, t.Floor, t.Accepted, t.Delivered, t.Dead, t.Expired, t.Purged,
				t.Pending(), t.Queued, t.Retrying, t.Parked)
		}
		tw.Flush()
		if verify {
			if len(q.Damaged) == 0 {
				fmt.Fprintln(w, "  verify: every record and page checked, no damage")
			}
			for _, d := range q.Damaged {
				if d.Seq != 0 {
					fmt.Fprintf(w, "  DAMAGED %s seq %d: %s\n", d.Segment, d.Seq, d.Err)
				} else {
					fmt.Fprintf(w, "  DAMAGED %s: %s\n", d.Segment, d.Err)
				}
			}
		}
	}
}
