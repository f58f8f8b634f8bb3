package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/admin"
	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/jetstore"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// engine is the node's storage engine, as storage.engine names it: bbolt
// (package buffer) or jetstream (package jetstore).
type engine interface {
	// queue opens (or returns the open) queue of a buffer or spillover route.
	queue(r policies.Route) (nodeQueue, error)
	// Bytes is what the queues hold.
	Bytes() int64
	Close() error
}

// nodeQueue is a route's queue as the node uses it: the store contract's
// Queue and DeadLetters, and a consumer per target.
type nodeQueue interface {
	store.Queue
	store.DeadLetters
	consumer(t policies.Target) (store.Consumer, error)
	// writer is the group commit's figures (zero if the engine has none).
	writer() admin.WriterCounts
}

// openEngine opens pol's storage engine. observeSync, if not nil, sees
// every bbolt commit's duration.
func openEngine(st policies.Storage, log *slog.Logger, observeSync func(time.Duration)) (engine, error) {
	if st.Engine == policies.EngineJetStream {
		s, err := jetstore.Open(jetConfig(st, log))
		if err != nil {
			return nil, err
		}
		return jetEngine{s}, nil
	}
	cfg := storeConfig(st, log)
	if observeSync != nil {
		cfg.ObserveSync = observeSync
	}
	s, err := buffer.Open(cfg)
	if err != nil {
		return nil, err
	}
	return boltEngine{s}, nil
}

// jetConfig maps storage (engine jetstream) onto the engine's config.
func jetConfig(st policies.Storage, log *slog.Logger) jetstore.Config {
	cfg := jetstore.Config{Dir: st.Dir, Retention: st.Retention, MaxBytes: st.MaxBytes, Logger: log}
	// The node's name in leases: its host and an id kept in its data
	// directory, so that a restarted node takes its leases back at once
	// (the directory's lock keeps two live nodes from sharing it), and two
	// hosts of the same name never share one.
	host, _ := os.Hostname()
	cfg.Node = host + ":" + nodeID(st.Dir, log)
	if j := st.JetStream; j != nil {
		cfg.URLs, cfg.Credentials, cfg.NKey = j.URLs, j.Credentials, j.NKey
		cfg.Replicas, cfg.StreamPrefix, cfg.LeaseTTL = j.Replicas, j.StreamPrefix, j.LeaseTTL
		if j.TLS != nil {
			cfg.TLSCA, cfg.TLSCert, cfg.TLSKey = j.TLS.CA, j.TLS.Cert, j.TLS.Key
		}
	}
	return cfg
}

// nodeID returns the random id kept in dir/node-id, creating it on first
// use; if it cannot be kept, a new one each start (leases are then taken
// back only after they expire).
func nodeID(dir string, log *slog.Logger) string {
	path := filepath.Join(dir, "node-id")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) == 16 {
		return strings.TrimSpace(string(b))
	}
	var raw [8]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = os.WriteFile(path, []byte(id+"\n"), 0o644)
	}
	if err != nil {
		log.Warn("jetstream: cannot keep the node id; a restart waits for its leases to expire", "path", path, "err", err)
	}
	return id
}

func targetNames(r policies.Route) []string {
	names := make([]string, len(r.Targets))
	for i, t := range r.Targets {
		names[i] = t.Name
	}
	return names
}

type boltEngine struct{ *buffer.Store }

func (e boltEngine) queue(r policies.Route) (nodeQueue, error) {
	q, err := e.Queue(r.Name, targetNames(r))
	if err != nil {
		return nil, err
	}
	return boltQueue{q}, nil
}

type boltQueue struct{ *buffer.Queue }

func (q boltQueue) consumer(t policies.Target) (store.Consumer, error) { return q.Consumer(t.Name) }

func (q boltQueue) writer() admin.WriterCounts {
	ws := q.WriterStats()
	return admin.WriterCounts{Commits: ws.Commits, Requests: ws.Requests, Time: ws.Time, FailedCommits: ws.FailedCommits}
}

type jetEngine struct{ *jetstore.Store }

func (e jetEngine) queue(r policies.Route) (nodeQueue, error) {
	q, err := e.Queue(r.Name, targetNames(r))
	if err != nil {
		return nil, err
	}
	return jetQueue{q}, nil
}

type jetQueue struct{ *jetstore.Queue }

// consumer bounds the messages the target's durable consumer hands out
// and not yet finished (MaxAckPending) to four times what its drainer can
// hold (concurrency times the batch size), at least 64: the drainer keeps
// the target's concurrency itself, and the room above it lets a node that
// took over deliver while a dead node's messages in flight wait out
// AckWait.
func (q jetQueue) consumer(t policies.Target) (store.Consumer, error) {
	t = t.WithDefaults()
	hold := t.Concurrency
	if t.Batch != nil && t.Batch.MaxMessages > 1 {
		hold *= t.Batch.MaxMessages
	}
	c, err := q.ConsumerWith(t.Name, jetstore.ConsumerOptions{MaxAckPending: max(64, 4*hold)})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (q jetQueue) writer() admin.WriterCounts { return admin.WriterCounts{} }

// checkOffline refuses an offline tool (dlq, inspect) on engine jetstream:
// its data lives on the servers; the admin API serves its dead letters.
func checkOffline(cmd string, st policies.Storage) error {
	if st.Engine == policies.EngineJetStream {
		return fmt.Errorf("sluice %s reads a bbolt data directory; storage.engine is jetstream: use the admin API of a running node (/v1/routes/{route}/targets/{target}/dead) or the nats CLI", cmd)
	}
	return nil
}
