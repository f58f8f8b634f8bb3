package policies

import (
	"fmt"
	"math"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults of a policy file.
const (
	DefaultListen       = ":8080"
	DefaultDir          = "./data"
	DefaultRetention    = 72 * time.Hour
	DefaultSegmentBytes = 64 << 20
	DefaultMaxBody      = 1 << 20 // buffer and spillover routes
	DefaultConcurrency  = 16
	DefaultTimeout      = 10 * time.Second
	// DefaultUpstreamTimeout is a passthrough route's timeout: its upstream's
	// answer must be read within it.
	DefaultUpstreamTimeout = 60 * time.Second
	DefaultMaxAttempts     = 10
	DefaultInitial         = 500 * time.Millisecond
	DefaultMaxBackoff      = 5 * time.Minute

	DefaultAdaptiveDecrease   = 0.7
	DefaultAdaptiveIncreasePc = 5 // percent of the ceiling per second, when increase is not set
	DefaultBreakerFailures    = 20
	DefaultBreakerCooldown    = 5 * time.Second
	DefaultBreakerMaxCooldown = 5 * time.Minute
	DefaultBatchMaxMessages   = 500
	DefaultBatchMaxBytes      = 5 << 20
	DefaultBatchMaxWait       = time.Second

	DefaultReadTimeout    = 30 * time.Second
	DefaultWriteTimeout   = 30 * time.Second
	DefaultIdleTimeout    = 2 * time.Minute
	DefaultMaxHeaderBytes = 16 << 10
	DefaultMaxConnections = 10000
	DefaultCaptureBytes   = 64 << 10
)

// NoBodyLimit is the max_body of a passthrough route that sets none, or sets
// "unlimited": any body size is forwarded. A passthrough route streams bodies
// larger than 64 KiB to its upstream as they arrive, so a large body costs
// sluice no memory; the upstream enforces its own limit.
const NoBodyLimit int64 = math.MaxInt64

// DefaultPassthroughMaxBody is the max_body of a passthrough route (and of
// default_upstream) that sets none.
const DefaultPassthroughMaxBody = NoBodyLimit

// Server.EventLoops for the file's event_loops: auto (the default) and 0.
const (
	EventLoopsAuto = 0
	EventLoopsOff  = -1
)

// Limits of a policy file.
const (
	// MinRetention is the shortest storage.retention: below it an
	// acknowledged message could expire before a drainer first tries it.
	MinRetention    = time.Minute
	MinSegmentBytes = 64 << 10
	MaxSegmentBytes = 4 << 30
	MaxBodyLimit    = 256 << 20
	MaxConcurrency  = 10000
	MaxBreakerFails = 1000000
	MaxBatchMsgs    = 100000
	MinBatchBytes   = 1 << 10
	MinHeaderBytes  = 1 << 10
	MaxHeaderBytes  = 1 << 20
	MaxConnections  = 1000000
	MaxEventLoops   = 64
	MaxCaptureBytes = 1 << 20
	MaxCallbackURL  = 2048 // longest callback URL a producer may name
)

// DefaultBufferMethods are the methods a buffer or spillover route takes
// when its match names none: those whose request has a body to deliver. A
// GET or HEAD asks for an answer, which a stored request never gets back.
var DefaultBufferMethods = []string{"POST", "PUT", "PATCH", "DELETE"}

// DefaultRetryOn is what a target retries when its retry.on is not set:
// 5xx, 408, 425, 429, timeout and connect.
func DefaultRetryOn() RetryOn {
	return RetryOn{Codes: map[int]bool{408: true, 425: true, 429: true}, Class5xx: true, Timeout: true, Connect: true}
}

func (d *decoder) policy(root *yaml.Node) *Policy {
	p := &Policy{File: d.file, Listen: DefaultListen}
	m := d.mapping(root, "", "top level", "listen", "admin", "server", "storage", "routes", "default_upstream", "callbacks", "status_api")
	if m == nil {
		return nil
	}
	p.StatusAPI = d.statusAPI(m)
	field(d, m, "listen", "", parseListen, &p.Listen)
	if p.Admin = d.admin(m); p.Admin != nil && p.Admin.Listen == p.Listen {
		d.errorf(m.vals["admin"].Line, "admin.listen", "admin listener %q is the public listener: the admin API must never be reachable through it; choose another port", p.Listen)
		p.Admin = nil
	}
	p.Server = d.server(m)
	p.Storage = d.storage(m)
	field(d, m, "default_upstream", "", parseURL, &p.DefaultUpstream)
	if n, ok := m.vals["callbacks"]; ok {
		p.Callbacks = d.callbacks(n, "callbacks")
	}

	items := d.list(m, "routes")
	if len(items) == 0 && !m.bad["routes"] {
		line := m.line
		if n, ok := m.vals["routes"]; ok {
			line = n.Line
		}
		d.errorf(line, "routes", "at least one route is required")
	}
	names := map[string]int{}
	var matchLines []int
	for i, n := range items {
		if r, matchLine := d.route(n, fmt.Sprintf("routes[%d]", i), names); r != nil {
			if r.CallbackHeader != "" && r.Callbacks == nil {
				r.Callbacks = p.Callbacks
				if r.Callbacks == nil && !m.bad["callbacks"] {
					d.errorf(r.Line, fmt.Sprintf("routes[%d].callback_header", i),
						"callback_header needs an allow-list of callback URLs: callbacks: { allow: [\"https://hooks.example.com/\"] }, at the top level or on the route")
				}
			}
			p.Routes = append(p.Routes, *r)
			matchLines = append(matchLines, matchLine)
		}
	}
	d.checkOverlaps(p.Routes, matchLines)
	d.checkEngine(p)
	return p
}

// statusAPI decodes the status_api block.
func (d *decoder) statusAPI(top *mapping) StatusAPI {
	s := StatusAPI{Enabled: true, RedactHeaders: slices.Clone(DefaultRedactHeaders)}
	n, ok := top.vals["status_api"]
	if !ok {
		return s
	}
	m := d.mapping(n, "status_api", "status_api", "enabled", "token", "redact_headers", "show_query")
	if m == nil {
		return s
	}
	s.Line = m.line
	field(d, m, "enabled", "", parseBool, &s.Enabled)
	field(d, m, "show_query", "", parseBool, &s.ShowQuery)
	if t, line, ok := d.text(m, "token", ""); ok && t != "" {
		if len(t) < MinStatusToken {
			d.errorf(line, m.field("token"), "status_api token is %d characters long; at least %d are needed (e.g. openssl rand -hex 16)", len(t), MinStatusToken)
		} else {
			s.Token = t
		}
	}
	for i, n := range d.list(m, "redact_headers") {
		at := fmt.Sprintf("%s[%d]", m.field("redact_headers"), i)
		v, ok := d.item(n, at)
		if !ok {
			continue
		}
		h, err := parseToken("header name")(v)
		if err != nil {
			d.errorf(n.Line, at, "%v", err)
			continue
		}
		if h = textproto.CanonicalMIMEHeaderKey(h); !slices.Contains(s.RedactHeaders, h) {
			s.RedactHeaders = append(s.RedactHeaders, h)
		}
	}
	return s
}

// admin decodes the admin block: a listener for operators, apart from the
// public one. A listener that other hosts can reach must have a token.
func (d *decoder) admin(top *mapping) *Admin {
	n, ok := top.vals["admin"]
	if !ok {
		return nil
	}
	m := d.mapping(n, "admin", "admin", "listen", "token")
	if m == nil {
		return nil
	}
	a := &Admin{Line: m.line}
	if !field(d, m, "listen", "the admin listener's address, such as \"127.0.0.1:9090\"", parseListen, &a.Listen) {
		return nil
	}
	if s, line, ok := d.text(m, "token", ""); ok {
		if len(s) < MinAdminToken {
			d.errorf(line, m.field("token"), "admin token is %d characters long; at least %d are needed (e.g. openssl rand -hex 16)", len(s), MinAdminToken)
			return nil
		}
		a.Token = s
	}
	if a.Token == "" && !m.bad["token"] && !IsLoopback(a.Listen) {
		d.errorf(m.vals["listen"].Line, m.field("listen"),
			"admin listener %q is reachable from other hosts and has no token: set admin.token (e.g. token: ${SLUICE_ADMIN_TOKEN}) or listen on 127.0.0.1", a.Listen)
		return nil
	}
	return a
}

func (d *decoder) server(top *mapping) Server {
	s := Server{
		ReadTimeout:    DefaultReadTimeout,
		WriteTimeout:   DefaultWriteTimeout,
		IdleTimeout:    DefaultIdleTimeout,
		MaxHeaderBytes: DefaultMaxHeaderBytes,
		MaxConnections: DefaultMaxConnections,
	}
	n, ok := top.vals["server"]
	if !ok {
		return s
	}
	m := d.mapping(n, "server", "server", "read_timeout", "write_timeout", "idle_timeout", "max_header_bytes", "max_connections", "event_loops", "tls")
	if m == nil {
		return s
	}
	s.Line = m.line
	field(d, m, "read_timeout", "", positiveDuration, &s.ReadTimeout)
	field(d, m, "write_timeout", "", positiveDuration, &s.WriteTimeout)
	field(d, m, "idle_timeout", "", positiveDuration, &s.IdleTimeout)
	field(d, m, "max_header_bytes", "", parseSize(MinHeaderBytes, MaxHeaderBytes), &s.MaxHeaderBytes)
	field(d, m, "max_connections", "", parseInt(1, MaxConnections), &s.MaxConnections)
	field(d, m, "event_loops", "", parseEventLoops, &s.EventLoops)
	if n, ok := m.vals["tls"]; ok {
		if tm := d.mapping(n, m.field("tls"), "tls", "cert", "key"); tm != nil {
			t := &TLS{Line: tm.line}
			ok1 := field(d, tm, "cert", "the certificate file (PEM), such as /etc/sluice/cert.pem", parseDir, &t.Cert)
			ok2 := field(d, tm, "key", "the private key file (PEM), such as /etc/sluice/key.pem", parseDir, &t.Key)
			if ok1 && ok2 {
				s.TLS = t
			}
		}
		if n, ok := m.vals["event_loops"]; ok && s.EventLoops != EventLoopsOff {
			d.warnf(n.Line, m.field("event_loops"), "event_loops has no effect with tls: every TLS connection is served by a goroutine of its own")
		}
	}
	return s
}

func (d *decoder) storage(top *mapping) Storage {
	s := Storage{
		Engine:       "bbolt",
		Dir:          DefaultDir,
		Fsync:        Fsync{Mode: FsyncAlways},
		Retention:    DefaultRetention,
		SegmentBytes: DefaultSegmentBytes,
	}
	n, ok := top.vals["storage"]
	if !ok {
		return s
	}
	m := d.mapping(n, "storage", "storage", "engine", "dir", "fsync", "retention", "max_bytes", "min_free_bytes", "segment_bytes", "jetstream")
	if m == nil {
		return s
	}
	s.Line = m.line
	field(d, m, "engine", "", parseEngine, &s.Engine)
	field(d, m, "dir", "", parseDir, &s.Dir)
	field(d, m, "fsync", "", parseFsync, &s.Fsync)
	field(d, m, "retention", "", parseRetention, &s.Retention)
	field(d, m, "max_bytes", "", parseSize(0, maxSize), &s.MaxBytes)
	field(d, m, "min_free_bytes", "", parseSize(0, maxSize), &s.MinFreeBytes)
	field(d, m, "segment_bytes", "", parseSize(MinSegmentBytes, MaxSegmentBytes), &s.SegmentBytes)
	if n, ok := m.vals["jetstream"]; ok {
		if s.Engine != EngineJetStream && !m.bad["engine"] {
			d.errorf(n.Line, m.field("jetstream"), "jetstream is only used with engine: jetstream (the engine is %s)", s.Engine)
		} else {
			s.JetStream = d.jetstream(n, m.field("jetstream"))
		}
	}
	if s.Engine == EngineJetStream {
		if s.JetStream == nil {
			s.JetStream = &JetStream{Replicas: 1, StreamPrefix: DefaultStreamPrefix, LeaseTTL: DefaultLeaseTTL}
		}
		for _, key := range []string{"segment_bytes", "min_free_bytes"} {
			if n, ok := m.vals[key]; ok {
				d.warnf(n.Line, m.field(key), "%s applies to engine bbolt only; it is ignored with jetstream", key)
			}
		}
		s.MinFreeBytes = 0 // the servers' disks are the servers' to watch
		if n, ok := m.vals["fsync"]; ok && s.Fsync.Mode != FsyncAlways {
			d.errorf(n.Line, m.field("fsync"), "engine jetstream acknowledges after the servers' publish acknowledgement: fsync %s cannot be honoured; remove it (the embedded server syncs every write; for a cluster set sync_interval on the servers)", s.Fsync)
		}
	}
	return s
}

// Defaults of storage.jetstream.
const (
	DefaultStreamPrefix = "sluice"
	DefaultLeaseTTL     = 10 * time.Second
	MinLeaseTTL         = time.Second
	MaxLeaseTTL         = 5 * time.Minute
)

var streamPrefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func (d *decoder) jetstream(n *yaml.Node, path string) *JetStream {
	m := d.mapping(n, path, "storage.jetstream", "urls", "credentials", "nkey", "tls", "replicas", "stream_prefix", "lease_ttl")
	if m == nil {
		return nil
	}
	j := &JetStream{Replicas: 1, StreamPrefix: DefaultStreamPrefix, LeaseTTL: DefaultLeaseTTL, Line: m.line}
	for i, n := range d.list(m, "urls") {
		at := fmt.Sprintf("%s[%d]", m.field("urls"), i)
		v, ok := d.item(n, at)
		if !ok {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || u.Host == "" || (u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss") {
			// The message can reach logs and the admin API's reload
			// answer: a password in the URL is shown as xxxxx.
			shown := "that does not parse as a URL"
			if err == nil {
				shown = strconv.Quote(v)
				if _, pw := u.User.Password(); pw {
					shown = strconv.Quote(u.Redacted())
				}
			}
			d.errorf(n.Line, at, "invalid NATS server URL %s: expected nats://host:4222 (or tls://, ws://, wss://)", shown)
			continue
		}
		j.URLs = append(j.URLs, v)
	}
	field(d, m, "credentials", "", parseDir, &j.Credentials)
	field(d, m, "nkey", "", parseDir, &j.NKey)
	if j.Credentials != "" && j.NKey != "" {
		d.errorf(m.vals["nkey"].Line, m.field("nkey"), "credentials and nkey are two ways to authenticate: set one")
	}
	if n, ok := m.vals["tls"]; ok {
		if tm := d.mapping(n, m.field("tls"), "storage.jetstream.tls", "ca", "cert", "key"); tm != nil {
			t := &JetStreamTLS{Line: tm.line}
			field(d, tm, "ca", "", parseDir, &t.CA)
			field(d, tm, "cert", "", parseDir, &t.Cert)
			field(d, tm, "key", "", parseDir, &t.Key)
			if (t.Cert == "") != (t.Key == "") {
				d.errorf(tm.line, tm.field("cert"), "cert and key go together: set both or neither")
			}
			j.TLS = t
		}
	}
	if field(d, m, "replicas", "", parseInt(1, 5), &j.Replicas) && j.Replicas != 1 && j.Replicas != 3 && j.Replicas != 5 {
		d.errorf(m.vals["replicas"].Line, m.field("replicas"), "replicas %d: expected 1, 3 or 5 (an odd number, for a quorum)", j.Replicas)
	}
	if j.Replicas > 1 && len(j.URLs) == 0 && !m.bad["urls"] {
		d.errorf(m.vals["replicas"].Line, m.field("replicas"), "replicas %d needs a cluster: set urls (with no urls, the embedded server is a single node: replicas 1)", j.Replicas)
	}
	field(d, m, "stream_prefix", "", func(s string) (string, error) {
		if !streamPrefixPattern.MatchString(s) {
			return "", fmt.Errorf("invalid stream_prefix %q: expected 1-32 letters, digits, _ or -", s)
		}
		return s, nil
	}, &j.StreamPrefix)
	field(d, m, "lease_ttl", "", func(s string) (time.Duration, error) {
		v, err := time.ParseDuration(s)
		if err != nil || v < MinLeaseTTL || v > MaxLeaseTTL {
			return 0, fmt.Errorf("invalid lease_ttl %q: expected a duration from %v to %v, such as 10s", s, MinLeaseTTL, MaxLeaseTTL)
		}
		return v, nil
	}, &j.LeaseTTL)
	return j
}

// route decodes routes[i]; names maps route names seen so far to their lines. It returns
// the line of the route's match too.
func (d *decoder) route(n *yaml.Node, path string, names map[string]int) (*Route, int) {
	m := d.mapping(n, path, "route", "name", "match", "mode", "idempotency_header", "max_body", "upstream", "rate", "burst", "timeout", "max_wait", "callback_header", "callbacks", "targets", "protocol", "hec_tokens", "hec_query_token")
	if m == nil {
		return nil, 0
	}
	matchLine := m.line
	r := &Route{Mode: ModeBuffer, MaxBody: DefaultMaxBody, Rate: unlimited, Burst: 1, Protocol: ProtocolHTTP, Line: m.line}
	if field(d, m, "name", "a route name such as orders", parseName, &r.Name) {
		line := m.vals["name"].Line
		if first, dup := names[r.Name]; dup {
			d.errorf(line, m.field("name"), "duplicate route name %q; first used at line %d", r.Name, first)
		} else {
			names[r.Name] = line
		}
	}
	if n, ok := m.vals["match"]; ok {
		r.Match, matchLine = d.match(n, m.field("match")), n.Line
	} else if !m.bad["match"] {
		d.errorf(m.line, m.field("match"), "required: a mapping such as { path: /api/orders, methods: [POST] }")
	}
	field(d, m, "mode", "", parseMode, &r.Mode)
	if r.Mode == ModePassthrough && !m.bad["mode"] {
		r.MaxBody = DefaultPassthroughMaxBody
		field(d, m, "max_body", "", parseBodyLimit, &r.MaxBody)
	} else {
		field(d, m, "max_body", "", parseSize(1, MaxBodyLimit), &r.MaxBody)
	}

	modeKnown := !m.bad["mode"]
	// A log protocol route answers its clients' GET and HEAD probes itself
	// (Elasticsearch's version probe, HEC's and Loki's health): it takes any
	// method unless its match names some.
	pn, hasProto := m.vals["protocol"]
	logProto := hasProto && pn.Kind == yaml.ScalarNode && pn.Value != ProtocolHTTP
	if modeKnown && (r.Mode == ModeBuffer || r.Mode == ModeSpillover) && !m.bad["match"] && !logProto {
		if len(r.Match.Methods) == 0 {
			r.Match.Methods = slices.Clone(DefaultBufferMethods)
		} else if slices.Contains(r.Match.Methods, "GET") || slices.Contains(r.Match.Methods, "HEAD") {
			d.warnf(matchLine, m.field("match.methods"), "a %s route stores GET and HEAD requests and answers them 202: the client never gets the target's answer (a version probe becomes a message); use a passthrough route for reads", r.Mode)
		}
	}
	switch {
	case !modeKnown:
	case r.Mode == ModePassthrough:
		field(d, m, "upstream", "the URL requests are proxied to, such as http://127.0.0.1:8081", parseURL, &r.Upstream)
		for _, key := range []string{"idempotency_header", "targets", "max_wait", "callback_header", "callbacks"} {
			if n, ok := m.vals[key]; ok {
				d.errorf(n.Line, m.field(key), "%s is only used with modes buffer and spillover; a passthrough route proxies to upstream", key)
				m.bad[key] = true
			}
		}
		field(d, m, "rate", "", ParseRate, &r.Rate)
		if !field(d, m, "burst", "", parseInt(1, MaxRate), &r.Burst) {
			r.Burst = defaultBurst(r.Rate)
		}
		r.Timeout = DefaultUpstreamTimeout
		field(d, m, "timeout", "", positiveDuration, &r.Timeout)
	default:
		if n := m.vals["upstream"]; n != nil {
			d.errorf(n.Line, m.field("upstream"), "upstream is only used with mode passthrough; a %s route delivers to targets", r.Mode)
		}
		for _, key := range []string{"rate", "burst", "timeout"} {
			if n, ok := m.vals[key]; ok {
				d.errorf(n.Line, m.field(key), "a route's %s applies to passthrough only; set the %s of each target instead", key, key)
				m.bad[key] = true
			}
		}
		field(d, m, "max_wait", "", positiveDuration, &r.MaxWait)
	}
	if !m.bad["idempotency_header"] {
		field(d, m, "idempotency_header", "", parseToken("header name"), &r.IdempotencyHeader)
	}
	if !m.bad["callback_header"] {
		field(d, m, "callback_header", "", parseToken("header name"), &r.CallbackHeader)
		if r.CallbackHeader != "" && strings.EqualFold(r.CallbackHeader, r.IdempotencyHeader) {
			d.errorf(m.vals["callback_header"].Line, m.field("callback_header"), "callback_header %q is also the idempotency_header", r.CallbackHeader)
		}
	}
	if n, ok := m.vals["callbacks"]; ok && !m.bad["callbacks"] {
		r.Callbacks = d.callbacks(n, m.field("callbacks"))
		if !m.has("callback_header") {
			d.errorf(n.Line, m.field("callbacks"), "callbacks on a route is only used with callback_header (the request header that names the callback URL)")
		}
	}
	if field(d, m, "protocol", "", parseProtocol(ProtocolHTTP, ProtocolElasticsearch, ProtocolNDJSON, ProtocolSplunkHEC, ProtocolLoki, ProtocolOTLP), &r.Protocol) && r.Protocol != ProtocolHTTP {
		line := m.vals["protocol"].Line
		if modeKnown && r.Mode != ModeBuffer {
			d.errorf(line, m.field("protocol"), "protocol %s is only used with mode buffer (a %s route answers with its target's reply)", r.Protocol, r.Mode)
		}
		for _, key := range []string{"idempotency_header", "callback_header"} {
			if n, ok := m.vals[key]; ok && !m.bad[key] {
				d.errorf(n.Line, m.field(key), "%s cannot be used with protocol %s: a request holds many documents, each stored as its own message", key, r.Protocol)
			}
		}
	}
	if n, ok := m.vals["hec_tokens"]; ok && !m.bad["hec_tokens"] {
		if r.Protocol != ProtocolSplunkHEC && !m.bad["protocol"] {
			d.errorf(n.Line, m.field("hec_tokens"), "hec_tokens is only used with protocol splunk-hec")
		}
		items := d.list(m, "hec_tokens")
		if len(items) == 0 && !m.bad["hec_tokens"] {
			d.errorf(n.Line, m.field("hec_tokens"), "hec_tokens is empty: it would check no token; list the tokens, or leave the key out to accept any")
		}
		seen := map[string]int{}
		for i, tn := range items {
			at := fmt.Sprintf("%s[%d]", m.field("hec_tokens"), i)
			v, ok := d.item(tn, at)
			if !ok {
				continue
			}
			if problem := hecTokenProblem(v); problem != "" {
				d.errorf(tn.Line, at, "%s", problem)
			} else if j, dup := seen[v]; dup {
				d.errorf(tn.Line, at, "the same token as hec_tokens[%d]", j)
			} else {
				seen[v] = i
				r.HECTokens = append(r.HECTokens, v)
			}
		}
	}
	if field(d, m, "hec_query_token", "", parseBool, &r.HECQueryToken) && r.HECQueryToken && !m.bad["hec_tokens"] && len(r.HECTokens) == 0 {
		d.errorf(m.vals["hec_query_token"].Line, m.field("hec_query_token"), "hec_query_token needs hec_tokens: without them no token is checked")
	}
	if m.bad["targets"] {
		return r, matchLine
	}
	items := d.list(m, "targets")
	if len(items) == 0 && modeKnown && r.Mode == ModeBuffer && !m.bad["targets"] {
		d.errorf(m.line, m.field("targets"), "required: a buffer route needs at least one target")
	}
	if len(items) != 1 && modeKnown && r.Mode == ModeSpillover && !m.bad["targets"] {
		line := m.line
		if n, ok := m.vals["targets"]; ok {
			line = n.Line
		}
		d.errorf(line, m.field("targets"), "a spillover route needs exactly one target, got %d (use mode buffer to fan out)", len(items))
	}
	targets := map[string]int{}
	for i, n := range items {
		if t := d.target(n, fmt.Sprintf("%s.targets[%d]", path, i), targets); t != nil {
			if r.Mode == ModeSpillover && t.Ordering != nil {
				d.errorf(t.Ordering.Line, fmt.Sprintf("%s.targets[%d].ordering", path, i), "a spillover route forwards requests as they come; ordering is only used with mode buffer")
			}
			if r.Mode == ModeSpillover && t.Fairness != nil {
				d.errorf(t.Fairness.Line, fmt.Sprintf("%s.targets[%d].fairness", path, i), "a spillover route forwards requests as they come; fairness is only used with mode buffer")
			}
			if r.Mode == ModeSpillover && t.Protocol != ProtocolHTTP {
				d.errorf(t.Line, fmt.Sprintf("%s.targets[%d].protocol", path, i), "a spillover route forwards one request at a time; protocol %s is only used with mode buffer", t.Protocol)
			} else if r.Mode == ModeSpillover && t.Batch != nil {
				d.errorf(t.Batch.Line, fmt.Sprintf("%s.targets[%d].batch", path, i), "a spillover route forwards one request at a time; batch is only used with mode buffer")
			}
			r.Targets = append(r.Targets, *t)
		}
	}
	return r, matchLine
}

func (d *decoder) match(n *yaml.Node, path string) Match {
	var mt Match
	m := d.mapping(n, path, "match", "host", "path", "exact", "methods")
	if m == nil {
		return mt
	}
	field(d, m, "host", "", parseHost, &mt.Host)
	field(d, m, "path", "a path prefix starting with /, such as /api/orders", parsePath, &mt.Path)
	field(d, m, "exact", "", parseBool, &mt.Exact)
	for i, n := range d.list(m, "methods") {
		at := fmt.Sprintf("%s.methods[%d]", path, i)
		s, ok := d.item(n, at)
		if !ok {
			continue
		}
		method, err := parseToken("method")(strings.ToUpper(s))
		if err != nil {
			d.errorf(n.Line, at, "%v", err)
		} else if !slices.Contains(mt.Methods, method) {
			mt.Methods = append(mt.Methods, method)
		}
	}
	return mt
}

// checkOverlaps reports routes that match the same requests as an earlier route: the
// same host and path, a method in common, and the earlier one a prefix match or both
// exact. lines holds the line of each route's match.
func (d *decoder) checkOverlaps(routes []Route, lines []int) {
	for j := range routes {
		for i := range j {
			a, b := &routes[i], &routes[j]
			if a.Match.Path == "" || a.Match.Path != b.Match.Path || a.Match.Host != b.Match.Host ||
				(a.Match.Exact && !b.Match.Exact) || !methodsOverlap(a.Match.Methods, b.Match.Methods) {
				continue
			}
			d.errorf(lines[j], fmt.Sprintf("routes[%d].match", j), "route %q at line %d already matches path %s with these methods", a.Name, lines[i], b.Match.Path)
			break
		}
	}
}

func methodsOverlap(a, b []string) bool {
	if len(a) == 0 || len(b) == 0 {
		return true
	}
	for _, m := range a {
		if slices.Contains(b, m) {
			return true
		}
	}
	return false
}

// target decodes one target; names maps the route's target names seen so far to their lines.
func (d *decoder) target(n *yaml.Node, path string, names map[string]int) *Target {
	m := d.mapping(n, path, "target", "name", "url", "rate", "burst", "concurrency", "timeout", "timezone", "windows", "retry", "adaptive", "breaker", "batch", "capture_response", "ordering", "fairness", "protocol", "compression", "byte_rate", "headers")
	if m == nil {
		return nil
	}
	t := &Target{
		Protocol:    ProtocolHTTP,
		Rate:        unlimited,
		Concurrency: DefaultConcurrency,
		Timeout:     DefaultTimeout,
		Timezone:    time.UTC,
		Retry:       defaultRetry(),
		Breaker:     defaultBreaker(),
		Line:        m.line,
	}
	if field(d, m, "name", "a target name such as inventory", parseName, &t.Name) {
		line := m.vals["name"].Line
		if first, dup := names[t.Name]; dup {
			d.errorf(line, m.field("name"), "duplicate target name %q in this route; first used at line %d", t.Name, first)
		} else {
			names[t.Name] = line
		}
	}
	field(d, m, "url", "the downstream URL, such as http://127.0.0.1:8081", parseURL, &t.URL)
	field(d, m, "rate", "", ParseRate, &t.Rate)
	if !field(d, m, "burst", "", parseInt(1, MaxRate), &t.Burst) {
		t.Burst = defaultBurst(t.Rate)
	}
	field(d, m, "concurrency", "", parseInt(1, MaxConcurrency), &t.Concurrency)
	field(d, m, "timeout", "", positiveDuration, &t.Timeout)
	field(d, m, "timezone", "", parseLocation, &t.Timezone)
	for i, n := range d.list(m, "windows") {
		if w := d.window(n, fmt.Sprintf("%s.windows[%d]", path, i)); w != nil {
			t.Windows = append(t.Windows, *w)
		}
	}
	if n, ok := m.vals["retry"]; ok {
		t.Retry = d.retry(n, m.field("retry"))
	}
	if n, ok := m.vals["adaptive"]; ok {
		t.Adaptive = d.adaptive(n, m.field("adaptive"), t.Rate, !m.bad["rate"])
	}
	if n, ok := m.vals["breaker"]; ok {
		t.Breaker = d.breaker(n, m.field("breaker"))
	}
	if n, ok := m.vals["batch"]; ok {
		t.Batch = d.batch(n, m.field("batch"))
	}
	if field(d, m, "protocol", "", parseProtocol(ProtocolHTTP, ProtocolNDJSON, ProtocolElasticsearchBulk, ProtocolLoki, ProtocolOTLP, ProtocolSplunkHEC), &t.Protocol) &&
		t.Protocol != ProtocolHTTP && t.Batch == nil && !m.bad["batch"] {
		// A log protocol sends batches: the batch defaults apply.
		t.Batch = &Batch{MaxMessages: DefaultBatchMaxMessages, MaxBytes: DefaultBatchMaxBytes, MaxWait: DefaultBatchMaxWait, Format: FormatNDJSON, Line: m.vals["protocol"].Line}
	}
	if n, ok := m.vals["headers"]; ok {
		t.Headers = d.headers(n, m.field("headers"))
	}
	field(d, m, "compression", "", parseCompression, &t.Compression)
	field(d, m, "byte_rate", "", parseByteRate, &t.ByteRate)
	for _, key := range []string{"compression", "byte_rate"} {
		if n, ok := m.vals[key]; ok && !m.bad[key] && t.Batch == nil && !m.bad["batch"] && !m.bad["protocol"] {
			d.errorf(n.Line, m.field(key), "%s applies to batches: set batch, or a protocol other than http", key)
		}
	}
	if n, ok := m.vals["capture_response"]; ok {
		t.CaptureResponse = d.capture(n, m.field("capture_response"))
	}
	if n, ok := m.vals["ordering"]; ok {
		if k, line, ok := d.keyed(n, m.field("ordering"), "ordering"); ok {
			t.Ordering = &Ordering{Key: k, Line: line}
		}
	}
	if n, ok := m.vals["fairness"]; ok {
		if k, line, ok := d.keyed(n, m.field("fairness"), "fairness"); ok {
			t.Fairness = &Fairness{Key: k, Line: line}
		}
	}
	for _, e := range t.Validate() {
		d.errorf(e.Line, m.field(e.Field), "%s", e.Msg)
	}
	return t
}

// keyed decodes an ordering or fairness mapping: { key: header:NAME }.
func (d *decoder) keyed(n *yaml.Node, path, where string) (KeySource, int, bool) {
	m := d.mapping(n, path, where, "key")
	if m == nil {
		return KeySource{}, 0, false
	}
	var k KeySource
	ok := field(d, m, "key", "where the key is read from, such as header:X-Customer-Id", parseKeySource, &k)
	return k, m.line, ok
}

func (d *decoder) capture(n *yaml.Node, path string) *Capture {
	m := d.mapping(n, path, "capture_response", "max_bytes")
	if m == nil {
		return nil
	}
	c := &Capture{MaxBytes: DefaultCaptureBytes, Line: m.line}
	field(d, m, "max_bytes", "", parseSize(1, MaxCaptureBytes), &c.MaxBytes)
	return c
}

// callbacks decodes a callbacks mapping (top level or route).
func (d *decoder) callbacks(n *yaml.Node, path string) *Callbacks {
	m := d.mapping(n, path, "callbacks", "allow")
	if m == nil {
		return nil
	}
	c := &Callbacks{Line: m.line}
	items := d.list(m, "allow")
	for i, n := range items {
		at := fmt.Sprintf("%s.allow[%d]", path, i)
		s, ok := d.item(n, at)
		if !ok {
			continue
		}
		if p, err := parseCallbackPrefix(s); err != nil {
			d.errorf(n.Line, at, "%v", err)
		} else if !slices.Contains(c.Allow, p) {
			c.Allow = append(c.Allow, p)
		}
	}
	if len(items) == 0 && !m.bad["allow"] {
		d.errorf(m.line, m.field("allow"), "required: a list of callback URL prefixes, such as [\"https://hooks.example.com/\"]")
	}
	return c
}

// adaptive decodes a target's adaptive mapping; ceiling is the target's rate, known
// unless rateOK is false (already reported).
func (d *decoder) adaptive(n *yaml.Node, path string, ceiling Rate, rateOK bool) *Adaptive {
	m := d.mapping(n, path, "adaptive", "min_rate", "increase", "decrease", "latency")
	if m == nil {
		return nil
	}
	a := &Adaptive{Decrease: DefaultAdaptiveDecrease, Line: m.line}
	if field(d, m, "min_rate", "the lowest rate adaptive may cut to, such as 10/s", parseFiniteRate, &a.MinRate) && rateOK {
		switch {
		case ceiling.Unlimited:
			d.errorf(m.line, path, "adaptive needs a finite rate on the target (the ceiling it recovers to), such as rate: 200/s")
		case a.MinRate.PerSecond > ceiling.PerSecond && !ceiling.Paused():
			d.errorf(m.vals["min_rate"].Line, m.field("min_rate"), "min_rate %s is above the target's rate %s", a.MinRate, ceiling)
		}
	}
	field(d, m, "increase", "", parseFiniteRate, &a.Increase)
	field(d, m, "decrease", "", parseFactor, &a.Decrease)
	field(d, m, "latency", "", positiveDuration, &a.Latency)
	return a
}

func defaultBreaker() Breaker {
	return Breaker{Failures: DefaultBreakerFailures, Cooldown: DefaultBreakerCooldown, MaxCooldown: DefaultBreakerMaxCooldown}
}

func (d *decoder) breaker(n *yaml.Node, path string) Breaker {
	b := defaultBreaker()
	m := d.mapping(n, path, "breaker", "failures", "cooldown", "max_cooldown")
	if m == nil {
		return b
	}
	b.Line = m.line
	field(d, m, "failures", "", parseInt(1, MaxBreakerFails), &b.Failures)
	field(d, m, "cooldown", "", positiveDuration, &b.Cooldown)
	if !field(d, m, "max_cooldown", "", positiveDuration, &b.MaxCooldown) {
		b.MaxCooldown = max(b.MaxCooldown, b.Cooldown) // the default never undercuts cooldown
	} else if b.MaxCooldown < b.Cooldown {
		d.errorf(m.vals["max_cooldown"].Line, m.field("max_cooldown"), "max_cooldown %s is less than cooldown %s", b.MaxCooldown, b.Cooldown)
	}
	return b
}

func (d *decoder) batch(n *yaml.Node, path string) *Batch {
	m := d.mapping(n, path, "batch", "max_messages", "max_bytes", "max_wait", "format")
	if m == nil {
		return nil
	}
	b := &Batch{MaxMessages: DefaultBatchMaxMessages, MaxBytes: DefaultBatchMaxBytes, MaxWait: DefaultBatchMaxWait, Format: FormatNDJSON, Line: m.line}
	field(d, m, "max_messages", "", parseInt(1, MaxBatchMsgs), &b.MaxMessages)
	field(d, m, "max_bytes", "", parseSize(MinBatchBytes, MaxBodyLimit), &b.MaxBytes)
	field(d, m, "max_wait", "", positiveDuration, &b.MaxWait)
	field(d, m, "format", "", parseFormat, &b.Format)
	return b
}

func (d *decoder) window(n *yaml.Node, path string) *Window {
	m := d.mapping(n, path, "window", "between", "days", "rate")
	if m == nil {
		return nil
	}
	w := &Window{Line: m.line}
	var span [2]int
	if field(d, m, "between", "", parseBetween, &span) {
		w.From, w.To, w.HasBetween = span[0], span[1], true
	}
	badDays := false
	for i, n := range d.list(m, "days") {
		at := fmt.Sprintf("%s.days[%d]", path, i)
		s, ok := d.item(n, at)
		if !ok {
			badDays = true
			continue
		}
		day, err := parseDay(s)
		if err != nil {
			d.errorf(n.Line, at, "%v", err)
			badDays = true
		} else if !slices.Contains(w.Days, day) {
			w.Days = append(w.Days, day)
		}
	}
	field(d, m, "rate", "the rate inside the window, such as 2000/s, 0 (paused) or unlimited", ParseRate, &w.Rate)
	if !w.HasBetween && len(w.Days) == 0 && !m.bad["between"] && !badDays && !m.bad["days"] {
		d.errorf(m.line, path, "a window needs between, days or both; one with neither would always apply (set the target's rate instead)")
	}
	return w
}

func defaultRetry() Retry {
	return Retry{MaxAttempts: DefaultMaxAttempts, Initial: DefaultInitial, Max: DefaultMaxBackoff, On: DefaultRetryOn()}
}

func (d *decoder) retry(n *yaml.Node, path string) Retry {
	r := defaultRetry()
	m := d.mapping(n, path, "retry", "max_attempts", "initial", "max", "on")
	if m == nil {
		return r
	}
	field(d, m, "max_attempts", "", parseInt(1, 1e9), &r.MaxAttempts)
	field(d, m, "initial", "", positiveDuration, &r.Initial)
	if !field(d, m, "max", "", positiveDuration, &r.Max) {
		r.Max = max(r.Max, r.Initial) // the default never undercuts initial
	} else if r.Max < r.Initial {
		d.errorf(m.vals["max"].Line, m.field("max"), "max backoff %s is less than initial %s", r.Max, r.Initial)
	}
	if n, ok := m.vals["on"]; ok && n.Kind == yaml.SequenceNode {
		r.On = RetryOn{Codes: map[int]bool{}}
	}
	for i, n := range d.list(m, "on") {
		at := fmt.Sprintf("%s.on[%d]", path, i)
		if s, ok := d.item(n, at); ok {
			if err := r.On.add(s); err != nil {
				d.errorf(n.Line, at, "%v", err)
			}
		}
	}
	return r
}

// headersSetBySluice are headers a target's headers key may not set: they
// describe the request's framing or identity, which sluice writes.
var headersSetBySluice = []string{"host", "content-length", "transfer-encoding", "connection", "content-encoding", "x-sluice-id", "x-sluice-attempt", "x-sluice-batch-size"}

// headers decodes a target's headers: a mapping of header names to values.
func (d *decoder) headers(n *yaml.Node, path string) []HeaderField {
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, path, "expected a mapping of header names to values, such as { Authorization: \"ApiKey ${ES_API_KEY}\" }, got %s", describe(n))
		return nil
	}
	var out []HeaderField
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		at := path + "." + k.Value
		name, err := parseToken("header name")(k.Value)
		if err != nil {
			d.errorf(k.Line, at, "%v", err)
			continue
		}
		if slices.Contains(headersSetBySluice, strings.ToLower(name)) {
			d.errorf(k.Line, at, "header %s is set by sluice", name)
			continue
		}
		if v.Kind != yaml.ScalarNode {
			d.errorf(v.Line, at, "expected a single value, got %s", describe(v))
			continue
		}
		val, err := expand(v.Value, d.lookup)
		if err != nil {
			d.errorf(v.Line, at, "%v", err)
			continue
		}
		if strings.ContainsAny(val, "\r\n\x00") {
			d.errorf(v.Line, at, "a header value cannot hold a line break or NUL")
			continue
		}
		out = append(out, HeaderField{Name: name, Value: val})
	}
	return out
}

// checkEngine refuses what the storage engine cannot do: with jetstream,
// ordering on a cluster (a node that takes a target over does not rebuild
// the order it keeps from the retry schedule) and fairness (not yet tested
// there).
func (d *decoder) checkEngine(p *Policy) {
	if p.Storage.Engine != EngineJetStream {
		return
	}
	cluster := p.Storage.JetStream != nil && len(p.Storage.JetStream.URLs) > 0
	for i, r := range p.Routes {
		for j, t := range r.Targets {
			at := fmt.Sprintf("routes[%d].targets[%d]", i, j)
			if t.Ordering != nil && cluster {
				d.errorf(t.Ordering.Line, at+".ordering", "ordering with engine jetstream needs the embedded server (no storage.jetstream.urls, line %d): a node taking a target over from another does not yet rebuild the order; use engine bbolt", p.Storage.JetStream.Line)
			}
			if t.Fairness != nil {
				d.errorf(t.Fairness.Line, at+".fairness", "fairness needs storage.engine bbolt: not yet supported with jetstream (storage at line %d)", p.Storage.Line)
			}
		}
	}
}

// hecTokenProblem says what makes token unusable as a HEC token, "" if
// nothing does: a client sends it as Authorization: Splunk <token>, one word
// of visible ASCII. It never quotes the token (a secret), only where the
// first bad byte is.
func hecTokenProblem(token string) string {
	if token == "" {
		return "the token is empty (an unset ${VAR}?): it would accept nothing"
	}
	for i := 0; i < len(token); i++ {
		var what string
		switch c := token[i]; {
		case c == ' ' || c == '\t':
			what = "a space"
		case c < 0x20 || c == 0x7f:
			what = "a control character"
		case c >= 0x80:
			what = "a non-ASCII character"
		default:
			continue
		}
		return fmt.Sprintf("the token has %s at byte %d: a token is sent as Authorization: Splunk <token>, one word of visible ASCII", what, i+1)
	}
	return ""
}

// parseEventLoops reads server.event_loops: auto, 0 (none) or 1..64.
func parseEventLoops(s string) (int, error) {
	if s == "auto" {
		return EventLoopsAuto, nil
	}
	n, err := parseInt(0, MaxEventLoops)(s)
	if err != nil {
		return 0, fmt.Errorf("invalid event_loops %q: expected auto (one per CPU), 0 (none: a goroutine per connection) or a whole number up to %d", s, MaxEventLoops)
	}
	if n == 0 {
		return EventLoopsOff, nil
	}
	return n, nil
}
