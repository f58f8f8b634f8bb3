package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
)

// cmdDlq lists, shows, replays and purges dead letters in the data directory
// of a policy. It opens the store itself, so the server must be stopped; a
// running server's are reached through its admin API (sluice ctl dead).
func cmdDlq(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, `usage:
  sluice dlq list    --policy FILE [--route R] [--target T] [--limit N]
  sluice dlq show    --policy FILE --id ID
  sluice dlq replay  --policy FILE --route R --target T (--id ID | --all) [--rate 10/s]
  sluice dlq purge   --policy FILE --route R --target T (--id ID | --all)
The server must be stopped: these open its data directory.
`)
		return 2
	}
	verb := args[0]
	fs := flag.NewFlagSet("dlq "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	policyPath := fs.String("policy", "policy.yaml", "policy file (its storage.dir is opened)")
	route := fs.String("route", "", "route name")
	target := fs.String("target", "", "target name")
	idStr := fs.String("id", "", "message id")
	all := fs.Bool("all", false, "every dead letter of the route's target")
	limit := fs.Int("limit", 100, "list at most this many")
	rateStr := fs.String("rate", "10/s", "replay: dead letters become due at this pace (the target's own rate still applies)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	pol, err := policies.Load(*policyPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := checkOffline("dlq", pol.Storage); err != nil {
		fmt.Fprintln(stderr, "sluice dlq:", err)
		return 1
	}
	log, _ := newLogger(stderr, "warn", "text")
	lock, err := lockDir(pol.Storage.Dir)
	if err != nil {
		fmt.Fprintln(stderr, "sluice dlq:", err)
		return 1
	}
	defer lock.release()
	store, err := buffer.Open(storeConfig(pol.Storage, log))
	if err != nil {
		fmt.Fprintln(stderr, "sluice dlq:", err)
		return 1
	}
	defer store.Close()
	queues := map[string]*buffer.Queue{}
	for _, r := range pol.Routes {
		queued := r.Mode == policies.ModeBuffer || r.Mode == policies.ModeSpillover
		if !queued || (*route != "" && r.Name != *route) {
			continue
		}
		var names []string
		for _, t := range r.Targets {
			names = append(names, t.Name)
		}
		q, err := store.Queue(r.Name, names)
		if err != nil {
			fmt.Fprintln(stderr, "sluice dlq:", err)
			return 1
		}
		queues[r.Name] = q
	}
	if len(queues) == 0 {
		fmt.Fprintf(stderr, "sluice dlq: no buffer or spillover route %q in %s\n", *route, pol.File)
		return 1
	}
	ctx := context.Background()
	switch verb {
	case "list":
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "id\troute\ttarget\tattempts\tlast status\tlast error\tdead since\t")
		n := 0
		for rname, q := range queues {
			for _, t := range q.Targets() {
				if *target != "" && t != *target {
					continue
				}
				dls, err := q.DeadLetters(t, 0, *limit)
				if err != nil {
					fmt.Fprintln(stderr, "sluice dlq:", err)
					return 1
				}
				for _, dl := range dls {
					last, _ := dl.State.Last()
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t\n", dl.Message.ID, rname, t, dl.State.Attempts,
						last.Status, last.Error, last.At.UTC().Format(time.RFC3339))
					n++
				}
			}
		}
		tw.Flush()
		fmt.Fprintf(stdout, "%d dead letters\n", n)
		return 0
	case "show":
		id, err := buffer.ParseID(*idStr)
		if err != nil {
			fmt.Fprintln(stderr, "sluice dlq show:", err)
			return 2
		}
		for rname, q := range queues {
			m, sts, err := q.Lookup(id)
			if err != nil {
				continue
			}
			out := map[string]any{"id": id.String(), "route": rname, "method": m.Method, "uri": m.URI,
				"enqueued_at": m.EnqueuedAt.UTC(), "headers": m.Header, "idempotency_key": m.IdempotencyKey, "targets": sts}
			if utf8.Valid(m.Body) {
				out["body"] = string(m.Body)
			} else {
				out["body_base64"] = m.Body
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(out)
			return 0
		}
		fmt.Fprintf(stderr, "sluice dlq show: no message %s\n", *idStr)
		return 1
	case "replay", "purge":
		if *route == "" || *target == "" || (*idStr == "") == !*all {
			fmt.Fprintf(stderr, "sluice dlq %s: --route, --target and one of --id or --all are required\n", verb)
			return 2
		}
		q := queues[*route]
		var seqs []uint64
		if *all {
			var after uint64
			for {
				dls, err := q.DeadLetters(*target, after, 1000)
				if err != nil {
					fmt.Fprintln(stderr, "sluice dlq:", err)
					return 1
				}
				for _, dl := range dls {
					seqs = append(seqs, dl.Message.Seq)
				}
				if len(dls) < 1000 {
					break
				}
				after = dls[len(dls)-1].Message.Seq
			}
		} else {
			id, err := buffer.ParseID(*idStr)
			if err != nil {
				fmt.Fprintln(stderr, "sluice dlq:", err)
				return 2
			}
			if _, _, err := q.Lookup(id); err != nil {
				fmt.Fprintf(stderr, "sluice dlq: %s: %v\n", *idStr, err)
				return 1
			}
			seqs = []uint64{id.Seq()}
		}
		rate, err := policies.ParseRate(*rateStr)
		if err != nil || rate.Paused() {
			fmt.Fprintf(stderr, "sluice dlq: --rate %q: want N/s, N/m or unlimited\n", *rateStr)
			return 2
		}
		now := time.Now()
		for i, seq := range seqs {
			if verb == "purge" {
				err = q.Purge(ctx, *target, seq)
			} else {
				at := now
				if !rate.Unlimited {
					at = now.Add(time.Duration(float64(i) / rate.PerSecond * float64(time.Second)))
				}
				err = q.Revive(ctx, *target, seq, at)
			}
			if err != nil {
				fmt.Fprintf(stderr, "sluice dlq %s: seq %d: %v\n", verb, seq, err)
				return 1
			}
		}
		if verb == "purge" {
			fmt.Fprintf(stdout, "purged %d dead letters of %s/%s\n", len(seqs), *route, *target)
		} else {
			fmt.Fprintf(stdout, "replaying %d dead letters of %s/%s at %s (through the target's own rate limit once sluice runs)\n",
				len(seqs), *route, *target, rate)
		}
		return 0
	default:
		fmt.Fprintf(stderr, "sluice dlq: unknown verb %q (list, show, replay, purge)\n", verb)
		return 2
	}
}
