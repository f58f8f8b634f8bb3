package policies

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Policy is a parsed, defaulted and validated policy file.
type Policy struct {
	File    string  // the path it was read from, as given to Load or Parse
	Listen  string  // public listener address; default ":8080"
	Admin   *Admin  // key admin: the operators' listener; nil (the default) = none
	Server  Server  // key server: limits and TLS of the public listener
	Storage Storage // default: bbolt in ./data
	Routes  []Route // at least one
	// DefaultUpstream (key default_upstream) receives, passed through, every
	// request no route matches; nil (the default) answers those 404.
	DefaultUpstream *url.URL
	// Warnings are what the file allows but is likely a mistake (such as a
	// buffer route taking GET), each with file:line; check prints them and
	// serve logs them.
	Warnings Errors
	// StatusAPI (key status_api) says who may read the status API and what
	// it shows.
	StatusAPI StatusAPI
	// Callbacks (key callbacks) is the allow-list of delivery callback URLs
	// for routes that set callback_header and no callbacks of their own; nil
	// (the default) = none.
	Callbacks *Callbacks
}

// StatusAPI configures GET /_sluice/v1/messages/{id} on the public listener.
// Anyone holding a message's id can read its status, so by default it shows
// no query values, no credential headers and no captured bodies.
type StatusAPI struct {
	// Enabled (key enabled) serves the status API; default true. false
	// answers its path 404.
	Enabled bool
	// Token (key token) is the bearer token a status request must carry
	// (Authorization: Bearer ...); "" (the default) = none needed. At least
	// MinStatusToken characters.
	Token string
	// RedactHeaders (key redact_headers) are the header names whose values
	// the status API replaces with "redacted" in a captured response:
	// DefaultRedactHeaders and the names listed, in canonical form
	// (textproto.CanonicalMIMEHeaderKey), without repeats.
	RedactHeaders []string
	// ShowQuery (key show_query) shows the request's query values; false (the
	// default) shows each parameter's name with the value "redacted".
	ShowQuery bool
	Line      int // line of the status_api mapping; 0 if the file has none
}

// DefaultRedactHeaders are the headers whose values the status API never
// shows: credentials and session cookies.
var DefaultRedactHeaders = []string{
	"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie",
	"X-Api-Key", "X-Auth-Token", "X-Csrf-Token", "X-Amz-Security-Token",
}

// MinStatusToken is the shortest status_api.token accepted.
const MinStatusToken = 16

// Callbacks lists where delivery callbacks may go: a callback URL named by a
// producer must start with one of Allow.
type Callbacks struct {
	// Allow (key allow) holds URL prefixes, each an http or https URL with a
	// path (at least "/"), so that the host is closed: a prefix
	// "https://hooks.example.com/" never matches "https://hooks.example.com.evil.org/".
	Allow []string
	Line  int // line of the callbacks mapping
}

// Allows reports whether the callback URL u starts with an allowed prefix.
// u must be an absolute http or https URL without user info; only a plain
// prefix comparison is made, so "http://h/a/../b" is judged as written.
func (c *Callbacks) Allows(u string) bool {
	if c == nil || len(u) > MaxCallbackURL {
		return false
	}
	for _, p := range c.Allow {
		if strings.HasPrefix(u, p) {
			pu, err := url.Parse(u)
			return err == nil && pu.User == nil && (pu.Scheme == "http" || pu.Scheme == "https") && pu.Host != ""
		}
	}
	return false
}

// Admin is the operators' listener (metrics, state, live control, reload),
// never served on the public one.
type Admin struct {
	Listen string // key listen: host:port; required
	// Token (key token) is the bearer token every endpoint but the health
	// checks requires; "" = none, allowed only on a loopback address
	// (IsLoopback). At least MinAdminToken characters.
	Token string
	Line  int // line of the admin mapping
}

// MinAdminToken is the shortest admin token accepted.
const MinAdminToken = 16

// IsLoopback reports whether the listen address host:port can be reached
// from this host only: 127.0.0.0/8, ::1 or localhost. An empty host (":9090")
// listens on every interface, so it is not.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server holds the limits of the public listener, which bound what one client can
// make sluice hold: a slow client (slowloris), a huge header, too many connections.
type Server struct {
	ReadTimeout    time.Duration // key read_timeout: request line, headers and body must arrive within it; default 30s
	WriteTimeout   time.Duration // key write_timeout: the reply must be written within it; default 30s
	IdleTimeout    time.Duration // key idle_timeout: an idle keep-alive connection is closed after it; default 2m
	MaxHeaderBytes int64         // key max_header_bytes: request line and headers; default 16KiB (431 beyond); 1KiB..1MiB
	MaxConnections int           // key max_connections: connections served at once; default 10000; 1..1000000
	// EventLoops (key event_loops): threads that accept plain-HTTP
	// connections and relay passthrough requests themselves, on Linux.
	// EventLoopsAuto (0, "auto" in the file, the default): one per CPU
	// sluice may use (GOMAXPROCS); EventLoopsOff (the file's 0): none, a
	// goroutine per connection, as on other systems, and the drainers
	// make their attempts in goroutines too (no delivery loops); else 1..64.
	EventLoops int
	TLS        *TLS // key tls: serve HTTPS with these files; nil (the default) = plain HTTP
	Line       int  // line of the server mapping; 0 if the file has none
}

// TLS names the certificate and key of the public listener (PEM files).
type TLS struct {
	Cert string // key cert: certificate chain file; required
	Key  string // key key: private key file; required
	Line int    // line of the tls mapping
}

// Storage says where and how accepted requests are kept.
type Storage struct {
	Engine       string        // "bbolt" (the default) or "jetstream"
	Dir          string        // data directory; default "./data"; a relative path is kept as written
	Fsync        Fsync         // when an append reaches the disk; default always
	Retention    time.Duration // how long messages are kept; default 72h; always > 0
	MaxBytes     int64         // admission limit on stored bytes; 0 (the default) = unlimited
	MinFreeBytes int64         // key min_free_bytes: free-disk floor; 0 (the default) = disabled
	SegmentBytes int64         // key segment_bytes: log segment size; default 64MiB, 64KiB..4GiB
	// JetStream (key jetstream) configures engine jetstream; nil with bbolt.
	// With engine jetstream and no jetstream mapping: an embedded server in Dir.
	JetStream *JetStream
	Line      int // line of the storage mapping; 0 if the file has none
}

// Engines of storage.engine.
const (
	EngineBbolt     = "bbolt"
	EngineJetStream = "jetstream"
)

// JetStream is storage.jetstream: where the NATS JetStream servers are and
// how the queues are laid out on them.
type JetStream struct {
	// URLs (key urls) of the NATS servers (nats://, tls://); none (the
	// default): an embedded single-node server in storage.dir.
	URLs []string
	// Credentials (key credentials) is a .creds file; NKey (key nkey) a file
	// with an nkey seed. At most one.
	Credentials, NKey string
	// TLS (key tls: {ca, cert, key}): files of the CA to trust and of the
	// client certificate and key; nil = none.
	TLS *JetStreamTLS
	// Replicas (key replicas) of every stream and bucket: 1 (the default), 3
	// or 5; above 1 needs urls (the embedded server is one node).
	Replicas int
	// StreamPrefix (key stream_prefix) names the streams, subjects and
	// buckets; default "sluice".
	StreamPrefix string
	// LeaseTTL (key lease_ttl) is how long a node's claim on a target lasts
	// unrenewed: another node takes over about this long after its holder
	// dies. Default 10s, 1s..5m.
	LeaseTTL time.Duration
	Line     int // line of the jetstream mapping
}

// JetStreamTLS is storage.jetstream.tls.
type JetStreamTLS struct {
	CA, Cert, Key string
	Line          int
}

// FsyncMode is when appended data is flushed to disk.
type FsyncMode int

const (
	FsyncAlways   FsyncMode = iota // before every acknowledgement (group commit)
	FsyncInterval                  // at most Fsync.Interval after an append
	FsyncNever                     // left to the operating system
)

// Fsync is the storage.fsync setting: "always", "interval:10ms" or "never".
type Fsync struct {
	Mode     FsyncMode
	Interval time.Duration // > 0 for FsyncInterval, else 0
}

// String returns the setting as written in a policy file.
func (f Fsync) String() string {
	switch f.Mode {
	case FsyncAlways:
		return "always"
	case FsyncInterval:
		return "interval:" + f.Interval.String()
	case FsyncNever:
		return "never"
	}
	return "FsyncMode(" + strconv.Itoa(int(f.Mode)) + ")"
}

// Route modes.
const (
	ModeBuffer      = "buffer"      // store, answer 202, deliver to Targets later
	ModePassthrough = "passthrough" // proxy straight to Upstream
	// ModeSpillover forwards straight to the route's single target when it has
	// room now and nothing is queued for it; otherwise it buffers.
	ModeSpillover = "spillover"
)

// Route is one entry of routes: which requests it takes and where they go.
type Route struct {
	Name              string   // unique; [a-z0-9][a-z0-9_-]{0,62}, so usable as a directory name
	Match             Match    // which requests belong to the route
	Mode              string   // ModeBuffer (default), ModePassthrough or ModeSpillover
	IdempotencyHeader string   // request header holding the client's idempotency key; "" = none (buffer and spillover only)
	MaxBody           int64    // largest accepted body in bytes; buffer, spillover: default 1MiB, at most 256MiB; passthrough: default NoBodyLimit (also "unlimited"), any size (streamed, not held)
	Upstream          *url.URL // passthrough: where requests go (required); nil otherwise
	Targets           []Target // buffer: every message goes to each (at least one); spillover: exactly one; passthrough: none
	// Rate and Burst (passthrough only) limit the requests proxied to
	// Upstream; beyond them the proxy answers 429 with Retry-After. The zero
	// Rate (key absent) is unlimited here: Rate.Unlimited is set.
	Rate  Rate
	Burst int // default max(1, ceil(rate/10)) for a finite rate, else 1
	// Timeout (key timeout; passthrough only) bounds one request to
	// Upstream: its answer must be read within it, else 504. Default
	// DefaultUpstreamTimeout; 0 on other modes.
	Timeout time.Duration
	// MaxWait (key max_wait; buffer and spillover) refuses new requests with
	// 503 when the estimated delivery time of some target exceeds it (a log
	// protocol route answers with its protocol's back-pressure reply); 0
	// (the default) = never refuse for that.
	MaxWait time.Duration
	// CallbackHeader (key callback_header; buffer and spillover) is the
	// request header in which a producer names a URL that receives each
	// target's final outcome (delivered or dead); "" (the default) = none.
	// The header is stored with the message and never sent to targets.
	CallbackHeader string
	// Callbacks is the allow-list in force for CallbackHeader: the route's
	// own (key callbacks), else the policy's top-level one. Set when
	// CallbackHeader is.
	Callbacks *Callbacks
	// Protocol (key protocol; buffer only) is what the route's clients
	// speak: ProtocolHTTP (the default: one message per request, answered
	// 202) or a log protocol, whose requests are split into one message per
	// document and answered in the protocol's own shape.
	Protocol string
	// HECTokens (key hec_tokens; protocol splunk-hec) are the HEC tokens
	// the route accepts, in Authorization: Splunk <token> (or as the
	// password of Basic credentials); none (the default, key absent) = no
	// check. Values are expanded from the environment like any other
	// (${HEC_TOKEN}); each must be one word of visible ASCII, listed once,
	// and the list, if present, not empty.
	HECTokens []string
	// HECQueryToken (key hec_query_token; with hec_tokens) also takes the
	// token from the query string, ?token=<token>, when the request has
	// no Authorization header, as Splunk does for a token whose query
	// string authentication is enabled. Off by default: a URL with a
	// token in it ends up in access logs along the way.
	HECQueryToken bool
	Line          int // line of the route's mapping
}

// Ingest protocols of a route (key protocol).
const (
	ProtocolHTTP          = "http"          // one message per request, 202 (the default)
	ProtocolElasticsearch = "elasticsearch" // the _bulk API and the calls Elasticsearch outputs make
	ProtocolNDJSON        = "ndjson"        // one JSON document per line
	ProtocolSplunkHEC     = "splunk-hec"    // Splunk's HTTP Event Collector (event and raw endpoints)
	ProtocolLoki          = "loki"          // Loki's push API (JSON, or snappy protobuf); also a delivery protocol
	ProtocolOTLP          = "otlp"          // OTLP/HTTP logs (/v1/logs, protobuf or JSON); also a delivery protocol
)

// Delivery protocols of a target (key protocol). ProtocolHTTP and
// ProtocolNDJSON are shared with routes.
const (
	ProtocolElasticsearchBulk = "elasticsearch-bulk" // _bulk batches with an _id per document, read item by item
)

// Match selects requests by host, path and method.
type Match struct {
	// Host is a host name in lower case, without port: exact ("shop.example.com")
	// or a wildcard for its subdomains ("*.example.com", which does not match
	// example.com itself); "" = any host.
	Host    string
	Path    string   // starts with "/"; a prefix match unless Exact, interpreted by the proxy
	Exact   bool     // key exact: the path must equal Path
	Methods []string // upper-case HTTP methods; empty = any method
}

// Target is one downstream of a buffer route, with its own pace and retries.
type Target struct {
	Name        string         // unique within the route; same charset as route names
	URL         *url.URL       // http or https, with a host, no user info, no fragment
	Rate        Rate           // outside every window; default unlimited
	Burst       int            // >= 1; default max(1, ceil(rate/10)) for a finite rate, else 1
	Concurrency int            // requests in flight at once; default 16; 1..10000
	Timeout     time.Duration  // per attempt; default 10s; > 0
	Timezone    *time.Location // where Windows are evaluated; default time.UTC; never nil
	Windows     []Window       // time-of-day rates; the first that contains the instant wins
	Retry       Retry
	Adaptive    *Adaptive // key adaptive: AIMD on the rate; nil (the default) = off
	Breaker     Breaker   // key breaker: always on; defaults 20 failures, 5s cooldown, 5m max_cooldown
	Batch       *Batch    // key batch: many messages per request; nil (the default) = one message per request
	// CaptureResponse (key capture_response) keeps the target's answer to a
	// successful delivery with the message's state; nil (the default) = off.
	CaptureResponse *Capture
	// Ordering (key ordering) delivers the messages with the same key in
	// arrival order, one at a time per key; nil (the default) = off. Not with
	// batch or fairness, nor on a spillover route.
	Ordering *Ordering
	// Fairness (key fairness) shares the target's rate among the keys with
	// backlog, round robin; nil (the default) = off. Not with batch or
	// ordering, nor on a spillover route.
	Fairness *Fairness
	// Protocol (key protocol) is how messages are sent: ProtocolHTTP (the
	// default: each request replayed as it came, or NDJSON lines with
	// batch), ProtocolNDJSON (batches of NDJSON lines) or
	// ProtocolElasticsearchBulk (_bulk batches). Any protocol but http
	// implies Batch (with its defaults if the key is absent).
	Protocol string
	// Compression (key compression; batch targets only): CompressionGzip
	// sends each batch with Content-Encoding gzip; "" (the default) = none.
	Compression string
	// ByteRate (key byte_rate; batch targets only) limits the bytes of
	// request bodies sent per second, as written before compression, besides
	// Rate's requests per second; 0 (the default) = unlimited.
	ByteRate int64
	// Headers (key headers) are set on every request to the target, such as
	// the store's credentials (Authorization: ApiKey ..., Splunk ...), with
	// ${VAR} expanded; they replace a stored header of the same name. nil
	// (the default) = none.
	Headers []HeaderField
	Line    int // line of the target's mapping
}

// HeaderField is one header a target's requests carry.
type HeaderField struct {
	Name, Value string
}

// CompressionGzip is the only compression a target can ask for.
const CompressionGzip = "gzip"

// KeySource says where a message's key is read from. The only source so far
// is a request header (written header:NAME); a message without it has no key.
type KeySource struct {
	Header string // the header's name, as written; matched case-insensitively
}

// String returns the source as written in a policy file.
func (k KeySource) String() string { return "header:" + k.Header }

// Ordering keeps per-key order: messages with the same key are delivered in
// the order they arrived, and a failing message holds back only its own key.
type Ordering struct {
	Key  KeySource // key key: required, such as header:X-Customer-Id
	Line int       // line of the ordering mapping
}

// Fairness shares a target's rate among keys (tenants), so one key's flood
// cannot starve the others.
type Fairness struct {
	Key  KeySource // key key: required, such as header:X-Tenant-Id
	Line int       // line of the fairness mapping
}

// Capture says how much of a downstream's answer is kept.
type Capture struct {
	MaxBytes int64 // key max_bytes: body bytes kept, the rest cut; default 64KiB; 1..1MiB
	Line     int   // line of the capture_response mapping
}

// Adaptive lowers a target's rate when the downstream shows it is overloaded and raises
// it back (additive increase, multiplicative decrease). The rate in force (Rate, a
// window's rate or an operator's) stays the ceiling.
type Adaptive struct {
	MinRate  Rate          // key min_rate: required; the floor, > 0 and finite
	Increase Rate          // key increase: added to the rate each second; zero (the default) = 5% of the ceiling per second
	Decrease float64       // key decrease: factor applied on a congestion signal, in (0, 1); default 0.7
	Latency  time.Duration // key latency: an attempt slower than this is a congestion signal; 0 (the default) = off
	Line     int           // line of the adaptive mapping
}

// Breaker stops sending to a target that fails every attempt, and probes it with one
// request at a time until it answers again.
type Breaker struct {
	Failures    int           // key failures: consecutive failed attempts that open it; default 20; 1..1000000
	Cooldown    time.Duration // key cooldown: how long it stays open the first time; default 5s
	MaxCooldown time.Duration // key max_cooldown: the cooldown doubles after each failed probe up to this; default 5m; >= Cooldown
	Line        int           // line of the breaker mapping; 0 if not written
}

// Batch formats.
const (
	FormatNDJSON = "ndjson" // one body per line, joined with \n; Content-Type application/x-ndjson
)

// Batch sends many messages in one downstream request.
type Batch struct {
	MaxMessages int           // key max_messages: messages per request; default 500; 1..100000
	MaxBytes    int64         // key max_bytes: bytes per request body; default 5MiB; 1KiB..256MiB
	MaxWait     time.Duration // key max_wait: how long a batch waits to fill once it has a message; default 1s
	Format      string        // key format: FormatNDJSON, the only one (and the default)
	Line        int           // line of the batch mapping
}

// Window gives a target another rate at certain times of the week, in the target's Timezone.
type Window struct {
	// From and To are minutes after local midnight, in [0, 1440), set when HasBetween.
	// To < From means the window crosses midnight; it then belongs to the day it starts on.
	// Without between the window lasts all day.
	From, To   int
	HasBetween bool
	Days       []time.Weekday // days on which the window starts; empty = every day
	Rate       Rate
	Line       int // line of the window's mapping
}

// Retry says how often and on what failures a delivery is tried again.
type Retry struct {
	MaxAttempts int           // total attempts, >= 1 (1 = no retry); default 10
	Initial     time.Duration // first backoff; default 500ms; > 0
	Max         time.Duration // backoff ceiling; default 5m (or Initial, if larger); >= Initial
	On          RetryOn       // default: 5xx, 408, 425, 429, timeout, connect
}

// RetryOn says which failures are retried. The items of `on:` are "5xx", "4xx",
// a status code 100-599, "timeout" and "connect".
type RetryOn struct {
	Codes    map[int]bool // status codes listed one by one; never nil
	Class5xx bool         // any 500-599
	Class4xx bool         // any 400-499
	Timeout  bool         // the attempt timed out
	Connect  bool         // no connection could be made
}

// Status reports whether a response with this status code is retried.
func (r RetryOn) Status(code int) bool {
	switch {
	case r.Codes[code]:
		return true
	case code >= 500 && code <= 599:
		return r.Class5xx
	case code >= 400 && code <= 499:
		return r.Class4xx
	}
	return false
}
