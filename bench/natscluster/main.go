// Command natscluster runs an in-process NATS JetStream cluster on
// 127.0.0.1 for benchmarks (bench/jetstream.sh): it prints the client URLs,
// comma-separated, on one line once the cluster can create a stream with
// every server as a replica, and runs until SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sluice-proxy/sluice/jetstore/jstest"
)

func main() {
	n := flag.Int("n", 3, "servers")
	dir := flag.String("dir", "", "store directory (one subdirectory per server)")
	syncAlways := flag.Bool("sync", true, "sync every write to disk before acknowledging (sync_interval: always)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "natscluster: -dir is required")
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	c, err := jstest.StartCluster(*dir, *n, *syncAlways)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natscluster:", err)
		os.Exit(1)
	}
	fmt.Println(strings.Join(c.URLs, ","))
	<-sigs
	c.Shutdown()
}
