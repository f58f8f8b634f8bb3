package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/internal/netio"
)

// The public listener's accept loop: the connection limit
// (server.max_connections) and the check of a connection's first line
// ending, both before fasthttp sees the connection.

// errBareLF is the read error a connection gives fasthttp once its first
// request line has ended in a bare LF: fasthttp waits for CRLF CRLF and would
// hold such a request until read_timeout; the error makes it answer at once
// (handleError: 400).
var errBareLF = errors.New("request line ends in a bare LF")

// rejectWriteTimeout bounds the write of the 503 to a connection over the limit,
// so that a client that does not read cannot hold the accept loop.
const rejectWriteTimeout = 100 * time.Millisecond

// limitListener counts the connections open and answers one over max with
// 503 and a JSON error (fasthttp's own answer is text/plain without
// Retry-After), then closes it. With TLS the connection is closed without a
// word: nothing can be said before a handshake. Accepted connections get
// their first line ending checked (lineCheck), after TLS if any.
type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64
	tls  *tls.Config // nil: plain HTTP
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.reject(c)
			continue
		}
		return l.serveConn(netio.NewConn(c)), nil
	}
}

// serveConn wraps a connection counted in l.open for the fasthttp server:
// its place is given back when it is closed, and its first line is checked.
func (l *limitListener) serveConn(c net.Conn) net.Conn {
	cc := &countedConn{Conn: c, l: l}
	if l.tls != nil {
		return &tlsLineConn{Conn: tls.Server(cc, l.tls)}
	}
	return &lineConn{Conn: cc}
}

func (l *limitListener) reject(c net.Conn) {
	if l.tls == nil {
		c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
		c.Write(l.rejection())
	}
	c.Close()
}

// rejection is the answer to a plain-HTTP connection over the limit.
func (l *limitListener) rejection() []byte {
	msg := `{"error":{"code":"too_many_connections","message":"sluice serves at most ` + strconv.FormatInt(l.max, 10) +
		` connections at once (server.max_connections); nothing was read, retry shortly"}}` + "\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" +
		"Content-Length: " + strconv.Itoa(len(msg)) + "\r\n\r\n" + msg)
}

// countedConn gives its place back when closed (once).
type countedConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
	}
	return c.Conn.Close()
}

// lineCheck watches the bytes read from a connection until the first LF:
// preceded by CR, all is well and it stops looking; a bare LF makes every
// later read fail with errBareLF. Only a connection's first request line is
// checked (a client that ends lines with LF alone does so from its first
// request); bodies and later requests are never scanned, so the check costs
// one IndexByte on the first read.
type lineCheck struct {
	done, bad, lastCR bool
}

func (lc *lineCheck) read(p []byte, n int, err error) (int, error) {
	if lc.done || lc.bad {
		return n, err
	}
	if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
		cr := lc.lastCR
		if i > 0 {
			cr = p[i-1] == '\r'
		}
		lc.done, lc.bad = cr, !cr
	} else if n > 0 {
		lc.lastCR = p[n-1] == '\r'
	}
	return n, err
}

type lineConn struct {
	net.Conn
	lc lineCheck
}

func (c *lineConn) Read(p []byte) (int, error) {
	if c.lc.bad {
		return 0, errBareLF
	}
	n, err := c.Conn.Read(p)
	return c.lc.read(p, n, err)
}

// tlsLineConn keeps *tls.Conn's methods (fasthttp tells a TLS connection
// by its ConnectionState, for X-Forwarded-Proto).
type tlsLineConn struct {
	*tls.Conn
	lc lineCheck
}

func (c *tlsLineConn) Read(p []byte) (int, error) {
	if c.lc.bad {
		return 0, errBareLF
	}
	n, err := c.Conn.Read(p)
	return c.lc.read(p, n, err)
}
