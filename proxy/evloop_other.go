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

// LoopCounts: no loops, nothing counted.
func (s *Server) LoopCounts() LoopCounts { return LoopCounts{} }
