package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluice-proxy/sluice/admin"
)

const ctlUsage = `usage: sluice ctl [--admin URL] [--token TOKEN] COMMAND ...
Talks to a running sluice through its admin API (admin.listen in the policy).
The token is read from --token or $SLUICE_ADMIN_TOKEN; URL defaults to
$SLUICE_ADMIN or http://127.0.0.1:9090.

  routes [--json]                              routes and targets: backlog, rate and why, ETA, dead letters
  pause ROUTE TARGET [--until RFC3339]         stop delivering to a target (kept across restarts)
  resume ROUTE TARGET                          end an operator's pause
  rate ROUTE TARGET RATE [--until RFC3339]     set the base rate (100/s, 0, unlimited; "policy" resets it)
  dead list ROUTE TARGET [--status N] [--class 5xx] [--since T] [--until T] [--limit N] [--after C]
  dead show ROUTE TARGET ID
  dead replay ROUTE TARGET (--id ID ... | --all | --status N | --class C) [--rate 10/s]
  dead purge ROUTE TARGET (--id ID ... | --all | --status N | --class C)
  counts ROUTE [--since T] [--until T] [--json] each target's messages by state: accepted = delivered + dead + expired + purged + pending
  replay ROUTE TARGET --state delivered|dead [--since T] [--until T] [--rate 10/s]
                                               deliver again what was accepted in [since, until) and is in that state
  reload                                       reload the policy file (as SIGHUP does)

With the server stopped, use 'sluice dlq' and 'sluice inspect', which open the data directory.
`

// cmdCtl runs one admin API call against a running server.
func cmdCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage) }
	base := fs.String("admin", envOr("SLUICE_ADMIN", "http://127.0.0.1:9090"), "admin API base URL")
	token := fs.String("token", os.Getenv("SLUICE_ADMIN_TOKEN"), "admin token (default $SLUICE_ADMIN_TOKEN)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, ctlUsage)
		return 2
	}
	c := &ctlClient{base: strings.TrimRight(*base, "/"), token: *token, http: &http.Client{Timeout: 5 * time.Minute}}
	if err := c.run(rest, stdout); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "sluice ctl: %v\n\n%s", err, ctlUsage)
			return 2
		}
		fmt.Fprintln(stderr, "sluice ctl:", err)
		return 1
	}
	return 0
}

type usageError string

func (e usageError) Error() string { return string(e) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type ctlClient struct {
	base, token string
	http        *http.Client
}

// call sends one request and decodes a 2xx JSON answer into out; any other
// answer is an error with the API's message.
func (c *ctlClient) call(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%v (is sluice running with an admin listener at %s?)", err, c.base)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct {
				Code    string   `json:"code"`
				Message string   `json:"message"`
				Errors  []string `json:"errors"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			msg := fmt.Sprintf("%s (%d %s)", e.Error.Message, resp.StatusCode, e.Error.Code)
			if len(e.Error.Errors) > 0 {
				msg = fmt.Sprintf("%d %s:\n  %s", resp.StatusCode, e.Error.Code, strings.Join(e.Error.Errors, "\n  "))
			}
			return errors.New(msg)
		}
		// A replay's answer: a 500 whose errors are the result's own.
		var res struct {
			Errors []string `json:"errors"`
		}
		if json.Unmarshal(data, &res) == nil && len(res.Errors) > 0 {
			return fmt.Errorf("%s %s: %s:\n  %s", method, path, resp.Status, strings.Join(res.Errors, "\n  "))
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func targetPath(route, target string) string {
	return "/v1/routes/" + url.PathEscape(route) + "/targets/" + url.PathEscape(target)
}

// interleaved parses flags that may come before or after positional
// arguments; it returns the positional ones.
func interleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError(err.Error())
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func (c *ctlClient) run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ctl "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	until := fs.String("until", "", "RFC 3339 end")
	asJSON := fs.Bool("json", false, "print JSON")
	status := fs.Int("status", 0, "dead letters whose last status is this")
	class := fs.String("class", "", "dead letters of this class: 5xx, 4xx, timeout, connect, damaged, other")
	since := fs.String("since", "", "dead at or after (RFC 3339)")
	limit := fs.Int("limit", 100, "list at most this many")
	after := fs.String("after", "", "list after this cursor")
	all := fs.Bool("all", false, "every dead letter of the target")
	rate := fs.String("rate", "", "replay pace")
	state := fs.String("state", "", "replay: delivered or dead")
	var ids multi
	fs.Var(&ids, "id", "dead letter id (repeatable)")
	pos, err := interleaved(fs, args[1:])
	if err != nil {
		return err
	}
	need := func(n int, what string) error {
		if len(pos) != n {
			return usageError(fmt.Sprintf("%s: expected %s", args[0], what))
		}
		return nil
	}
	var untilT *time.Time
	if *until != "" && args[0] != "dead" {
		t, err := time.Parse(time.RFC3339, *until)
		if err != nil {
			return usageError("--until: expected an RFC 3339 time such as 2026-12-05T06:00:00Z")
		}
		untilT = &t
	}
	switch args[0] {
	case "routes":
		var st json.RawMessage
		if err := c.call("GET", "/v1/routes", nil, &st); err != nil {
			return err
		}
		if *asJSON {
			_, err := stdout.Write(append(st, '\n'))
			return err
		}
		return printRoutes(stdout, st)
	case "pause", "resume":
		if err := need(2, "ROUTE TARGET"); err != nil {
			return err
		}
		body := map[string]any{}
		if untilT != nil {
			body["until"] = untilT
		}
		var out json.RawMessage
		if err := c.call("POST", targetPath(pos[0], pos[1])+"/"+args[0], body, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: route %s, target %s\n", map[string]string{"pause": "paused", "resume": "resumed"}[args[0]], pos[0], pos[1])
		return nil
	case "rate":
		if err := need(3, "ROUTE TARGET RATE"); err != nil {
			return err
		}
		body := map[string]any{"rate": pos[2]}
		if untilT != nil {
			body["until"] = untilT
		}
		if err := c.call("POST", targetPath(pos[0], pos[1])+"/rate", body, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rate of route %s, target %s: %s\n", pos[0], pos[1], pos[2])
		return nil
	case "counts":
		if err := need(1, "ROUTE"); err != nil {
			return err
		}
		q := url.Values{}
		for k, v := range map[string]string{"since": *since, "until": *until} {
			if v != "" {
				q.Set(k, v)
			}
		}
		var out admin.CountsReply
		if err := c.call("GET", "/v1/routes/"+url.PathEscape(pos[0])+"/counts?"+q.Encode(), nil, &out); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(out)
		}
		printCounts(stdout, out.Targets)
		return nil
	case "replay":
		if err := need(2, "ROUTE TARGET --state delivered|dead [--since T] [--until T] [--rate R]"); err != nil {
			return err
		}
		if *state != "delivered" && *state != "dead" {
			return usageError("replay: --state delivered or --state dead")
		}
		body := map[string]any{"state": *state}
		for k, v := range map[string]string{"since": *since, "until": *until, "rate": *rate} {
			if v != "" {
				body[k] = v
			}
		}
		var out admin.ReplayResult
		if err := c.call("POST", targetPath(pos[0], pos[1])+"/replay", body, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "replayed %d (skipped %d that changed meanwhile)\n", out.Replayed, out.Skipped)
		if !out.Done {
			fmt.Fprintln(stdout, "not done: run the same command again for the rest")
		}
		return nil
	case "reload":
		var res struct {
			Changes       []string `json:"changes"`
			RestartNeeded []string `json:"restart_needed"`
		}
		if err := c.call("POST", "/v1/reload", nil, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "reloaded: %d changes\n", len(res.Changes))
		for _, ch := range res.Changes {
			fmt.Fprintln(stdout, "  "+ch)
		}
		for _, r := range res.RestartNeeded {
			fmt.Fprintln(stdout, "  needs a restart: "+r)
		}
		return nil
	case "dead":
		if len(pos) < 3 {
			return usageError("dead: expected list|show|replay|purge ROUTE TARGET")
		}
		verb, p := pos[0], targetPath(pos[1], pos[2])+"/dead"
		switch verb {
		case "list":
			q := url.Values{}
			if *status != 0 {
				q.Set("status", fmt.Sprint(*status))
			}
			for k, v := range map[string]string{"class": *class, "since": *since, "until": *until, "after": *after} {
				if v != "" {
					q.Set(k, v)
				}
			}
			q.Set("limit", fmt.Sprint(*limit))
			var out struct {
				DeadLetters []struct {
					ID       string    `json:"id"`
					Attempts int       `json:"attempts"`
					Status   int       `json:"status"`
					Class    string    `json:"class"`
					Error    string    `json:"error"`
					DeadAt   time.Time `json:"dead_at"`
					Method   string    `json:"method"`
					URI      string    `json:"uri"`
				} `json:"dead_letters"`
				Next string `json:"next"`
			}
			if err := c.call("GET", p+"?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "id\tattempts\tstatus\tclass\terror\tdead at\trequest\t")
			for _, d := range out.DeadLetters {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s %s\t\n", d.ID, d.Attempts, d.Status, d.Class, d.Error, d.DeadAt.UTC().Format(time.RFC3339), d.Method, d.URI)
			}
			tw.Flush()
			if out.Next != "" {
				fmt.Fprintf(stdout, "more: --after %s\n", out.Next)
			}
			return nil
		case "show":
			if len(pos) != 4 {
				return usageError("dead show: expected ROUTE TARGET ID")
			}
			var out json.RawMessage
			if err := c.call("GET", p+"/"+url.PathEscape(pos[3]), nil, &out); err != nil {
				return err
			}
			_, err := stdout.Write(append(out, '\n'))
			return err
		case "replay", "purge":
			body := map[string]any{}
			filter := map[string]any{}
			if *status != 0 {
				filter["status"] = *status
			}
			if *class != "" {
				filter["class"] = *class
			}
			switch {
			case len(ids) > 0:
				body["ids"] = ids
			case *all:
				body["all"] = true
			case len(filter) > 0:
				body["filter"] = filter
			default:
				return usageError("dead " + verb + ": give --id, --all, --status or --class")
			}
			if *rate != "" {
				body["rate"] = *rate
			}
			var out struct {
				Replayed int      `json:"replayed"`
				Purged   int      `json:"purged"`
				NotFound []string `json:"not_found"`
				Done     bool     `json:"done"`
			}
			if err := c.call("POST", p+"/"+verb, body, &out); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "replayed %d, purged %d, not found %d\n", out.Replayed, out.Purged, len(out.NotFound))
			if !out.Done {
				fmt.Fprintln(stdout, "not done: run the same command again for the rest")
			}
			return nil
		}
		return usageError("dead: unknown verb " + verb)
	}
	return usageError("unknown command " + args[0])
}

func printRoutes(w io.Writer, raw json.RawMessage) error {
	var st struct {
		Routes []struct {
			Name    string `json:"name"`
			Mode    string `json:"mode"`
			Retired bool   `json:"retired"`
			Targets []struct {
				Name        string     `json:"name"`
				Backlog     uint64     `json:"backlog"`
				InFlight    int        `json:"in_flight"`
				Rate        string     `json:"rate"`
				Reason      string     `json:"rate_reason"`
				Paused      bool       `json:"paused"`
				PausedUntil *time.Time `json:"paused_until"`
				Breaker     string     `json:"breaker"`
				ETA         float64    `json:"drain_eta_seconds"`
				DeadLetters int        `json:"dead_letters"`
			} `json:"targets"`
		} `json:"routes"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "route\ttarget\tbacklog\tin flight\trate\twhy\tETA to drain\tbreaker\tdead letters\t")
	for _, r := range st.Routes {
		name := r.Name
		if r.Retired {
			name += " (removed)"
		}
		for _, t := range r.Targets {
			eta := "never (paused)"
			if t.ETA >= 0 {
				eta = (time.Duration(t.ETA) * time.Second).String()
			}
			why := t.Reason
			if t.PausedUntil != nil {
				why += " until " + t.PausedUntil.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t\n", name, t.Name, t.Backlog, t.InFlight, t.Rate, why, eta, t.Breaker, t.DeadLetters)
		}
	}
	return tw.Flush()
}

// printCounts prints each target's counts, with the identity's terms.
func printCounts(w io.Writer, cs []admin.TargetCounts) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "target\taccepted\tdelivered\tdead\texpired\tpurged\tpending\t(queued\tin flight\tretrying\tparked)\t")
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", c.Target, c.Accepted, c.Delivered, c.Dead, c.Expired, c.Purged,
			c.Pending, c.Queued, c.InFlight, c.Retrying, c.Parked)
	}
	tw.Flush()
}
