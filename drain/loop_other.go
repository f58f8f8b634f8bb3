//go:build !linux

package drain

import "errors"

// loopSupported: the delivery loop is Linux's (epoll); elsewhere every
// attempt is made by a goroutine.
const loopSupported = false

type loop struct{}

func newLoop(*runner) (*loop, error) { return nil, errors.New("no delivery loop on this system") }
func (*loop) submit(job)             {}
func (*loop) close()                 {}
