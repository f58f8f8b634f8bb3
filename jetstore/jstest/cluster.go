// Package jstest starts NATS JetStream servers in-process for tests and
// benchmarks: a cluster of n servers on 127.0.0.1, each with its own file
// store. It is not used by sluice itself.
package jstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is n JetStream servers routed to each other.
type Cluster struct {
	Servers []*server.Server
	URLs    []string // client URLs, nats://127.0.0.1:port
}

// freePorts returns n ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// StartCluster starts n servers (n > 1) with stores under dir, syncing
// every write when syncAlways, and waits until the cluster can create a
// stream with n replicas (bounded by a minute).
func StartCluster(dir string, n int, syncAlways bool) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
	}
	c := &Cluster{}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("s%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("s%d", i+1)),
			SyncAlways: syncAlways,
			MaxPayload: 8 << 20,
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "sluice-test", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(o)
		if err != nil {
			c.Shutdown()
			return nil, err
		}
		s.Start()
		c.Servers = append(c.Servers, s)
		c.URLs = append(c.URLs, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(30 * time.Second) {
			c.Shutdown()
			return nil, errors.New("jstest: a server is not ready after 30s")
		}
	}
	if err := c.waitReady(n); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

// waitReady creates and deletes a stream with n replicas until it works.
func (c *Cluster) waitReady(n int) error {
	nc, err := nats.Connect(strings.Join(c.URLs, ","))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "jstest_ready", Subjects: []string{"jstest.ready"}, Replicas: n})
		if err == nil {
			err = js.DeleteStream(ctx, "jstest_ready")
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jstest: the cluster cannot create a stream with %d replicas after a minute: %w", n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts down server i.
func (c *Cluster) Stop(i int) {
	c.Servers[i].Shutdown()
	c.Servers[i].WaitForShutdown()
}

// Shutdown stops every server.
func (c *Cluster) Shutdown() {
	for _, s := range c.Servers {
		s.Shutdown()
	}
	for _, s := range c.Servers {
		s.WaitForShutdown()
	}
}
