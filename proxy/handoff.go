package proxy

import (
	"net"
	"sync"
)

// LoopCounts is what the event loops did: requests relayed and answered
// whole, answers streamed by a goroutine (chunked, large or unframed), and
// connections handed to the goroutine-per-connection server (a request the
// loops do not relay). All zero without loops.
type LoopCounts struct {
	Relayed, Streamed, Stored, HandedOver uint64
}

// handoffListener is the fasthttp server's listener when the event loops
// accept (evloop_linux.go): its Accept returns the connections they hand
// over.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{ch: make(chan net.Conn, 128), done: make(chan struct{}), addr: addr}
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close ends Accept and closes the connections handed over and not taken.
func (h *handoffListener) Close() error {
	h.once.Do(func() { close(h.done) })
	for {
		select {
		case c := <-h.ch:
			c.Close()
		default:
			return nil
		}
	}
}

func (h *handoffListener) Addr() net.Addr { return h.addr }

// give queues c for Accept, or closes it once the listener is closed.
func (h *handoffListener) give(c net.Conn) {
	select {
	case <-h.done:
		c.Close()
		return
	default:
	}
	select {
	case h.ch <- c:
	case <-h.done:
		c.Close()
	}
}

// prefixConn is a connection whose first bytes were read by someone else:
// Read returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
