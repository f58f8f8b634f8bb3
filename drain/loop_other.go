//go:build !linux

package drain

import "errors"

// loopSupported: the delivery loop is Linux's (epoll); elsewhere every
// attempt is made by a goroutine.
const loopSupported = false

type loop struct{}

func (*runner) startLoops() error { return errors.New("no delivery loop on this system") }
func (*runner) pickLoop() *loop   { return nil }
func (*loop) submit(job)          {}
func (*loop) close()              {}
