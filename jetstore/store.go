package jetstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sluice-proxy/sluice/store"
)

// Defaults of Config's zero values.
const (
	DefaultStreamPrefix = "sluice"
	DefaultLeaseTTL     = 10 * time.Second
	DefaultAckWait      = 5 * time.Second
	DefaultRetention    = 72 * time.Hour
	// DefaultMaxPayload is the embedded server's max_payload: the largest
	// record it takes (a record is the request with its headers).
	DefaultMaxPayload = 8 << 20
	opTimeout         = 10 * time.Second
	setUpTry          = 3 * time.Second
	setUpTime         = 30 * time.Second
)

// Config configures a Store. The zero value of every field but Dir (with no
// URLs) has a default.
type Config struct {
	// URLs of the NATS servers to connect to; none: an embedded single-node
	// server with its JetStream file store in Dir, syncing every write
	// (sync_interval: always) and listening on no port.
	URLs []string
	// Dir is the embedded server's store directory (DIR/jetstream/...).
	Dir string
	// Credentials is a .creds file (user JWT and nkey seed); NKey a file
	// holding an nkey seed. At most one.
	Credentials, NKey string
	// TLS: CA file to trust, client certificate and key files (all optional).
	TLSCA, TLSCert, TLSKey string
	// Replicas of every stream and bucket: 1, 3 or 5. Default 1.
	Replicas int
	// StreamPrefix names the streams (<prefix>_<route>), their subjects
	// (<prefix>.<route>) and the buckets (<prefix>_state, <prefix>_leases).
	// Default "sluice".
	StreamPrefix string
	// Retention is the streams' and the state bucket's max age, and the
	// idempotency keys' duplicate window. Default 72h.
	Retention time.Duration
	// MaxBytes bounds each route's stream (JetStream refuses appends past
	// it: ErrFull); 0 = unlimited.
	MaxBytes int64
	// LeaseTTL is how long a node's lease on a target lasts without renewal;
	// another node takes over within about one TTL of the holder's death.
	// Default 10s.
	LeaseTTL time.Duration
	// AckWait is how long a message handed to a node may stay unacknowledged
	// after that node stops telling the server it is still working on it
	// (a dead node's messages in flight are handed out again after it).
	// Default 5s. Messages this node holds are kept alive every AckWait/3.
	AckWait time.Duration
	// HandoverQuiet is how long a node that gains a target's lease waits
	// before handing out its messages, so that no second holds the sends of
	// two holders: 0 = DefaultHandoverQuiet (1s), except with the embedded
	// server, where no other node can connect (none); negative = none.
	HandoverQuiet time.Duration
	// Node names this node in leases; default a random name. A node that
	// restarts under the same name takes its leases back at once (two live
	// nodes must never share a name).
	Node string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Server, if set, is an in-process server to connect to (tests);
	// URLs and Dir are then not used to connect.
	Server *server.Server
}

// namePattern is the names the engine takes for routes and targets (the
// policy's own pattern): safe as NATS subject tokens, stream and KV keys.
var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Store is a connection to JetStream holding the queues of one sluice node.
type Store struct {
	cfg    Config
	log    *slog.Logger
	srv    *server.Server // the embedded server; nil when connected to URLs
	nc     *nats.Conn
	js     jetstream.JetStream
	state  jetstream.KeyValue // s.*, r.*, d.*: outcomes, retry schedule, dead letters
	kvPre  string             // the state bucket's subject prefix, for writes without waiting
	leases jetstream.KeyValue

	noMulti atomic.Bool // the servers refused a batched direct get: list one state at a time

	mu     sync.Mutex
	queues map[string]*Queue
	closed bool
}

// Open connects (or starts the embedded server), and creates or updates the
// buckets.
func Open(cfg Config) (*Store, error) {
	if cfg.StreamPrefix == "" {
		cfg.StreamPrefix = DefaultStreamPrefix
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`).MatchString(cfg.StreamPrefix) {
		return nil, fmt.Errorf("jetstore: stream prefix %q: want 1 to 32 letters, digits, _ or -", cfg.StreamPrefix)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.Replicas != 1 && cfg.Replicas != 3 && cfg.Replicas != 5 {
		return nil, fmt.Errorf("jetstore: replicas %d: want 1, 3 or 5", cfg.Replicas)
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.Node == "" {
		cfg.Node = nats.NewInbox()[len(nats.InboxPrefix):]
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HandoverQuiet == 0 && (len(cfg.URLs) > 0 || cfg.Server != nil) {
		cfg.HandoverQuiet = DefaultHandoverQuiet
	}
	s := &Store{cfg: cfg, log: cfg.Logger, queues: map[string]*Queue{}}
	var opts []nats.Option
	opts = append(opts, nats.Name("sluice "+cfg.Node), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	switch {
	case cfg.Server != nil:
		opts = append(opts, nats.InProcessServer(cfg.Server))
	case len(cfg.URLs) == 0:
		if cfg.Dir == "" {
			return nil, errors.New("jetstore: no URLs and no directory for the embedded server")
		}
		srv, err := StartEmbedded(cfg.Dir)
		if err != nil {
			return nil, err
		}
		s.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
		if s.cfg.HandoverQuiet == 0 {
			s.cfg.HandoverQuiet = -1 // no other node: nobody to hand over from
		}
	default:
		o, err := connectOptions(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o...)
	}
	url := ""
	if len(cfg.URLs) > 0 && cfg.Server == nil {
		url = joinURLs(cfg.URLs)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		s.shutdownServer()
		return nil, fmt.Errorf("jetstore: connect: %w", err)
	}
	s.nc = nc
	if s.js, err = jetstream.New(nc); err != nil {
		s.abort()
		return nil, fmt.Errorf("jetstore: %w", err)
	}
	err = setUp(func(ctx context.Context) (err error) {
		s.state, err = s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: cfg.StreamPrefix + "_state", History: 1, TTL: cfg.Retention,
			Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
		})
		return err
	})
	if err != nil {
		s.abort()
		return nil, fmt.Errorf("jetstore: state bucket: %w", err)
	}
	s.kvPre = "$KV." + cfg.StreamPrefix + "_state."
	err = setUp(func(ctx context.Context) (err error) {
		s.leases, err = s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: cfg.StreamPrefix + "_leases", History: 1, TTL: cfg.LeaseTTL,
			Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
		})
		return err
	})
	if err != nil {
		s.abort()
		return nil, fmt.Errorf("jetstore: lease bucket: %w", err)
	}
	if s.srv == nil && cfg.Server == nil {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		s.logServerSync(ctx)
	}
	return s, nil
}

// setUp runs a creation (of a bucket, stream or consumer) until it works,
// each try bounded by setUpTry, all by setUpTime: nodes starting together
// on a new cluster race to create the same things, and a cluster electing
// leaders answers late.
func setUp(create func(ctx context.Context) error) error {
	deadline := time.Now().Add(setUpTime)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), setUpTry)
		err := create(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code == 400 {
			return err // a bad configuration: trying again changes nothing
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func joinURLs(urls []string) string {
	out := ""
	for i, u := range urls {
		if i > 0 {
			out += ","
		}
		out += u
	}
	return out
}

// connectOptions are the credentials and TLS options of cfg.
func connectOptions(cfg Config) ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.Credentials != "" && cfg.NKey != "" {
		return nil, errors.New("jetstore: credentials and nkey: choose one")
	}
	if cfg.Credentials != "" {
		if _, err := os.Stat(cfg.Credentials); err != nil {
			return nil, fmt.Errorf("jetstore: credentials: %w", err)
		}
		opts = append(opts, nats.UserCredentials(cfg.Credentials))
	}
	if cfg.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKey)
		if err != nil {
			return nil, fmt.Errorf("jetstore: nkey: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSCA != "" {
			pem, err := os.ReadFile(cfg.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("jetstore: tls ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("jetstore: tls ca %s: no certificate found", cfg.TLSCA)
			}
			tc.RootCAs = pool
		}
		if cfg.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("jetstore: tls cert: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// logServerSync logs what a client can learn of the servers' durability:
// the server's version and JetStream domain. The sync interval is not
// reported to clients, so the log says what to set.
func (s *Store) logServerSync(ctx context.Context) {
	info, err := s.js.AccountInfo(ctx)
	attrs := []any{"server", s.nc.ConnectedServerName(), "version", s.nc.ConnectedServerVersion(),
		"cluster", s.nc.ConnectedClusterName(), "replicas", s.cfg.Replicas}
	if err == nil {
		attrs = append(attrs, "domain", info.Domain, "account_storage_bytes", info.Store)
	}
	s.log.Warn("jetstream: a 202 waits for the publish acknowledgement, which the servers give before fsync unless they run with jetstream.sync_interval: always; clients cannot read that setting: check the servers' configuration (see README, storage.engine jetstream)", attrs...)
}

// StartEmbedded starts a single-node server with JetStream's file store in
// dir, syncing every write, listening on no port. Shut it down with
// Shutdown and WaitForShutdown.
func StartEmbedded(dir string) (*server.Server, error) {
	opts := &server.Options{
		ServerName:         "sluice-embedded",
		DontListen:         true,
		JetStream:          true,
		StoreDir:           dir,
		SyncAlways:         true,
		MaxPayload:         DefaultMaxPayload,
		NoSigs:             true,
		NoLog:              true,
		JetStreamMaxMemory: 64 << 20,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("jetstore: embedded server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("jetstore: embedded server: not ready after 30s")
	}
	return srv, nil
}

// Queue opens (creating if needed) the queue of route name with its targets.
// Opening it again returns the same Queue.
func (s *Store) Queue(name string, targets []string) (*Queue, error) {
	if !namePattern.MatchString(name) {
		return nil, fmt.Errorf("jetstore: route name %q: want %s", name, namePattern)
	}
	for _, t := range targets {
		if !namePattern.MatchString(t) {
			return nil, fmt.Errorf("jetstore: target name %q: want %s", t, namePattern)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	if q := s.queues[name]; q != nil {
		if err := q.addTargets(targets); err != nil {
			return nil, err
		}
		return q, nil
	}
	q, err := openQueue(s, name, targets)
	if err != nil {
		return nil, err
	}
	s.queues[name] = q
	return q, nil
}

// Bytes is what the queues' streams hold, from their last Stats.
func (s *Store) Bytes() int64 {
	s.mu.Lock()
	qs := make([]*Queue, 0, len(s.queues))
	for _, q := range s.queues {
		qs = append(qs, q)
	}
	s.mu.Unlock()
	var n int64
	for _, q := range qs {
		n += q.Stats().Bytes
	}
	return n
}

// Close stops the consumers (their messages in flight are handed back to
// the server, their leases released), closes the connection, and stops the
// embedded server if there is one.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	qs := s.queues
	s.mu.Unlock()
	for _, q := range qs {
		q.close()
	}
	err := s.nc.Drain()
	deadline := time.Now().Add(opTimeout)
	for !s.nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s.nc.Close()
	s.shutdownServer()
	return err
}

func (s *Store) abort() {
	s.nc.Close()
	s.shutdownServer()
}

func (s *Store) shutdownServer() {
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
}

// Conn is the store's connection (for tests that break it).
func (s *Store) Conn() *nats.Conn { return s.nc }
