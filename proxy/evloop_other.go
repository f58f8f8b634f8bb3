//go:build !linux

package proxy

import (
	"context"
	"net"
)

// engine: the event loops exist on Linux only; elsewhere every connection
// has its goroutine (evloop_linux.go).
type engine struct{ hand *handoffListener }

func newEngine(*Server, net.Listener, *limitListener, int) *engine { return nil }
func (e *engine) serve() error                                     { return nil }
func (e *engine) shutdown(context.Context) error                   { return nil }

// loopCounts: no loops, nothing counted.
func (s *Server) loopCounts() (relayed, streamed, handed uint64) { return 0, 0, 0 }
