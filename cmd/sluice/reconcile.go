package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/admin"
	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/store"
)

const reconcileUsage = `usage: sluice reconcile --route R --target T --received FILE|URL [--since T] [--until T]
                        [--admin URL --token TOKEN | --data DIR]
Compares what a downstream says it received with what sluice delivered to
its target, for messages accepted in [since, until) (RFC 3339; default: all
the store holds). The list has one message a line: an id, an idempotency
key, or a JSON object with "id" and/or "key" (NDJSON). A delivered message
is matched by its id or its idempotency key (what the target got as
Idempotency-Key). Prints each delivered message missing from the list and
each entry of the list that sluice did not deliver in the window (extra),
then a summary. Exit status: 0 when they agree, 1 on a difference, 2 on bad
usage or an error.

Against a running server it reads the admin API (--admin, default
$SLUICE_ADMIN or http://127.0.0.1:9090; token from --token or
$SLUICE_ADMIN_TOKEN). With --data it opens the data directory itself: the
server must be stopped.
`

// received is the downstream's list: ids and keys, with how often each
// appears (a repeat is a duplicate delivery, not a difference).
type received struct {
	ids, keys map[string]int
	order     []string // entries in the order read, for the extra ones
	isID      []bool
}

func readReceived(r io.Reader) (*received, error) {
	rc := &received{ids: map[string]int{}, keys: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if strings.HasPrefix(s, "{") {
			var o struct {
				ID  string `json:"id"`
				Key string `json:"key"`
				IK  string `json:"idempotency_key"`
			}
			if err := json.Unmarshal([]byte(s), &o); err != nil {
				return nil, fmt.Errorf("line %d: not a JSON object with id or key", line)
			}
			if o.Key == "" {
				o.Key = o.IK
			}
			switch {
			case o.ID != "":
				rc.add(o.ID, true)
			case o.Key != "":
				rc.add(o.Key, false)
			default:
				return nil, fmt.Errorf("line %d: a JSON object without id or key", line)
			}
			continue
		}
		_, err := store.ParseID(s)
		rc.add(s, err == nil)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	return rc, nil
}

func (rc *received) add(s string, isID bool) {
	m := rc.keys
	if isID {
		m = rc.ids
	}
	if m[s] == 0 {
		rc.order = append(rc.order, s)
		rc.isID = append(rc.isID, isID)
	}
	m[s]++
}

// openReceived opens FILE, "-" (stdin) or an http(s) URL.
func openReceived(src string) (io.ReadCloser, error) {
	if src == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		resp, err := (&http.Client{Timeout: 10 * time.Minute}).Get(src)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != 200 {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %s", src, resp.Status)
		}
		return resp.Body, nil
	}
	return os.Open(src)
}

// deliveredFn calls fn with each message delivered to the target in the
// window, in seq order.
type deliveredFn func(fn func(id, key string, at time.Time)) error

func cmdReconcile(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, reconcileUsage) }
	route := fs.String("route", "", "route name")
	target := fs.String("target", "", "target name")
	recv := fs.String("received", "", "the downstream's list: a file, - for stdin, or an http(s) URL")
	sinceS := fs.String("since", "", "accepted at or after (RFC 3339)")
	untilS := fs.String("until", "", "accepted before (RFC 3339)")
	base := fs.String("admin", envOr("SLUICE_ADMIN", "http://127.0.0.1:9090"), "admin API base URL of a running server")
	token := fs.String("token", os.Getenv("SLUICE_ADMIN_TOKEN"), "admin token (default $SLUICE_ADMIN_TOKEN)")
	data := fs.String("data", "", "data directory, read with the server stopped (instead of --admin)")
	quiet := fs.Bool("quiet", false, "print the summary only")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *route == "" || *target == "" || *recv == "" || fs.NArg() > 0 {
		fmt.Fprint(stderr, "sluice reconcile: --route, --target and --received are required\n\n"+reconcileUsage)
		return 2
	}
	var since, until time.Time
	for _, p := range []struct {
		name, v string
		dst     *time.Time
	}{{"since", *sinceS, &since}, {"until", *untilS, &until}} {
		if p.v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, p.v)
		if err != nil {
			fmt.Fprintf(stderr, "sluice reconcile: --%s: expected an RFC 3339 time such as 2026-12-05T00:00:00Z\n", p.name)
			return 2
		}
		*p.dst = t
	}
	if !since.IsZero() && !until.IsZero() && !until.After(since) {
		fmt.Fprintln(stderr, "sluice reconcile: --until must be after --since")
		return 2
	}
	rd, err := openReceived(*recv)
	if err != nil {
		fmt.Fprintln(stderr, "sluice reconcile: --received:", err)
		return 2
	}
	rc, err := readReceived(rd)
	rd.Close()
	if err != nil {
		fmt.Fprintf(stderr, "sluice reconcile: %s: %v\n", *recv, err)
		return 2
	}
	var each deliveredFn
	if *data != "" {
		closeFn, fn, err := offlineDelivered(*data, *route, *target, since, until)
		if err != nil {
			fmt.Fprintln(stderr, "sluice reconcile:", err)
			return 2
		}
		defer closeFn()
		each = fn
	} else {
		each = onlineDelivered(strings.TrimRight(*base, "/"), *token, *route, *target, since, until)
	}
	return reconcile(rc, each, *quiet, stdout, stderr)
}

// reconcile compares and prints; it returns the exit status.
func reconcile(rc *received, each deliveredFn, quiet bool, stdout, stderr io.Writer) int {
	w := bufio.NewWriter(stdout)
	defer w.Flush()
	matchedIDs := map[string]bool{}
	matchedKeys := map[string]bool{}
	var delivered, missing, dups int
	err := each(func(id, key string, at time.Time) {
		delivered++
		n := rc.ids[id]
		if n > 0 {
			matchedIDs[id] = true
		}
		if key != "" && rc.keys[key] > 0 {
			matchedKeys[key] = true
			n += rc.keys[key]
		}
		// The downstream got the id as Idempotency-Key when there was no key.
		if key == "" && rc.keys[id] > 0 {
			matchedKeys[id] = true
			n += rc.keys[id]
		}
		switch {
		case n == 0:
			missing++
			if !quiet {
				fmt.Fprintf(w, "missing\t%s\tkey=%s\taccepted_at=%s\n", id, key, at.UTC().Format(time.RFC3339Nano))
			}
		case n > 1:
			dups++
		}
	})
	if err != nil {
		w.Flush()
		fmt.Fprintln(stderr, "sluice reconcile:", err)
		return 2
	}
	extra := 0
	for i, s := range rc.order {
		if rc.isID[i] && matchedIDs[s] || !rc.isID[i] && matchedKeys[s] {
			continue
		}
		extra++
		if !quiet {
			kind := "key"
			if rc.isID[i] {
				kind = "id"
			}
			fmt.Fprintf(w, "extra\t%s=%s\n", kind, s)
		}
	}
	fmt.Fprintf(w, "delivered %d, received %d, missing %d, extra %d, received more than once %d\n",
		delivered, len(rc.order), missing, extra, dups)
	if missing > 0 || extra > 0 {
		return 1
	}
	return 0
}

// onlineDelivered streams the delivered messages from a running server's
// admin API (format=ndjson), checking the stream's end line.
func onlineDelivered(base, token, route, target string, since, until time.Time) deliveredFn {
	return func(fn func(id, key string, at time.Time)) error {
		q := url.Values{"format": {"ndjson"}, "target": {target}, "state": {"delivered"}}
		if !since.IsZero() {
			q.Set("since", since.Format(time.RFC3339Nano))
		}
		if !until.IsZero() {
			q.Set("until", until.Format(time.RFC3339Nano))
		}
		req, err := http.NewRequest("GET", base+"/v1/routes/"+url.PathEscape(route)+"/messages?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{}).Do(req)
		if err != nil {
			return fmt.Errorf("%v (is sluice running with an admin listener at %s?)", err, base)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			var e struct {
				Error struct{ Message string } `json:"error"`
			}
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			json.Unmarshal(data, &e)
			return fmt.Errorf("admin API: %s: %s", resp.Status, e.Error.Message)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var row struct {
				admin.Row
				End   bool            `json:"end"`
				Error json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
				return fmt.Errorf("admin API: a line that is not JSON")
			}
			switch {
			case len(row.Error) > 0:
				return fmt.Errorf("admin API: the export failed: %s", exportError(row.Error))
			case row.End:
				return nil
			}
			fn(row.ID, row.Key, row.AcceptedAt)
		}
		if err := sc.Err(); err != nil {
			return err
		}
		return errors.New("admin API: the export ended without its end line (cut short)")
	}
}

// offlineDelivered opens the data directory's queue for route (the server
// must be stopped) with a retention too long to delete anything while it
// reads.
func offlineDelivered(dir, route, target string, since, until time.Time) (func(), deliveredFn, error) {
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); err == nil {
		return nil, nil, fmt.Errorf("%s holds an embedded JetStream store (storage.engine jetstream): reconcile against a running node with --admin", dir)
	}
	targets, err := buffer.QueueTargets(dir, route)
	if err != nil {
		return nil, nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, nil, err
	}
	st, err := buffer.Open(buffer.Config{Dir: dir, Retention: 100 * 365 * 24 * time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		lock.release()
		return nil, nil, err
	}
	closeFn := func() { st.Close(); lock.release() }
	q, err := st.Queue(route, targets)
	if err != nil {
		closeFn()
		return nil, nil, err
	}
	f := store.Filter{Target: target, Phase: store.Delivered, Since: since, Until: until}
	return closeFn, func(fn func(id, key string, at time.Time)) error {
		var after uint64
		for {
			last, end, err := q.Messages(f, after, 4096, func(r *store.Row) bool {
				fn(r.ID.String(), r.Key, r.AcceptedAt)
				return true
			})
			if err != nil {
				return err
			}
			if end {
				return nil
			}
			after = last
		}
	}, nil
}

// exportError is the message of an export's error line: an object with a
// code and a message, or (from a server before the admin API had one
// error shape) a string.
func exportError(raw json.RawMessage) string {
	var e struct{ Code, Message string }
	if json.Unmarshal(raw, &e) == nil && e.Message != "" {
		return fmt.Sprintf("%s (%s)", e.Message, e.Code)
	}
	var s string
	if json.Unmarshal(raw, &s) == nil && s != "" {
		return s
	}
	return "no message"
}
