package netio

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case p, ok := <-accepted:
		if !ok {
			t.Fatal("accept failed")
		}
		t.Cleanup(func() { p.Close() })
		return c, p
	case <-time.After(5 * time.Second):
		t.Fatal("no accept")
	}
	return nil, nil
}

// armCounter counts the deadlines really armed on a connection.
type armCounter struct {
	net.Conn
	reads, writes atomic.Int64
}

func (c *armCounter) SetReadDeadline(t time.Time) error {
	c.reads.Add(1)
	return c.Conn.SetReadDeadline(t)
}

func (c *armCounter) SetWriteDeadline(t time.Time) error {
	c.writes.Add(1)
	return c.Conn.SetWriteDeadline(t)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestLazyDeadlineLater: a read deadline moved later is honoured, though
// the earlier one stays armed until it passes; the read then times out at
// the later one, with a timeout error as the connection's own.
func TestLazyDeadlineLater(t *testing.T) {
	c, peer := tcpPair(t)
	lc := NewConn(c)
	start := time.Now()
	lc.SetReadDeadline(start.Add(50 * time.Millisecond))
	lc.SetReadDeadline(start.Add(400 * time.Millisecond))
	go func() {
		time.Sleep(150 * time.Millisecond)
		peer.Write([]byte("x"))
	}()
	buf := make([]byte, 8)
	if n, err := lc.Read(buf); err != nil || n != 1 {
		t.Fatalf("read after the first deadline: %d, %v; want the byte sent at 150ms", n, err)
	}
	_, err := lc.Read(buf)
	if d := time.Since(start); !isTimeout(err) || d < 400*time.Millisecond || d > 5*time.Second {
		t.Fatalf("second read: %v after %v; want a timeout at 400ms", err, d)
	}
}

// TestLazyDeadlineEarlier: a deadline moved earlier is armed at once.
func TestLazyDeadlineEarlier(t *testing.T) {
	c, _ := tcpPair(t)
	lc := NewConn(c)
	start := time.Now()
	lc.SetReadDeadline(start.Add(time.Minute))
	lc.SetReadDeadline(start.Add(50 * time.Millisecond))
	_, err := lc.Read(make([]byte, 8))
	if d := time.Since(start); !isTimeout(err) || d > 5*time.Second {
		t.Fatalf("read: %v after %v; want a timeout at 50ms", err, d)
	}
}

// TestLazyDeadlineCleared: a deadline cleared (zero) no longer ends a read.
func TestLazyDeadlineCleared(t *testing.T) {
	c, peer := tcpPair(t)
	lc := NewConn(c)
	lc.SetDeadline(time.Now().Add(50 * time.Millisecond))
	lc.SetDeadline(time.Time{})
	go func() {
		time.Sleep(200 * time.Millisecond)
		peer.Write([]byte("x"))
	}()
	if n, err := lc.Read(make([]byte, 8)); err != nil || n != 1 {
		t.Fatalf("read with the deadline cleared: %d, %v", n, err)
	}
}

// TestLazyDeadlineInterrupt: a deadline set from another goroutine in the
// past ends a read blocked under a later one, as Shutdown does.
func TestLazyDeadlineInterrupt(t *testing.T) {
	c, _ := tcpPair(t)
	lc := NewConn(c)
	start := time.Now()
	lc.SetReadDeadline(start.Add(30 * time.Millisecond))
	lc.SetReadDeadline(start.Add(time.Minute)) // re-armed when the first passes
	go func() {
		time.Sleep(200 * time.Millisecond)
		lc.SetReadDeadline(time.Now())
	}()
	_, err := lc.Read(make([]byte, 8))
	if d := time.Since(start); !isTimeout(err) || d < 200*time.Millisecond || d > 5*time.Second {
		t.Fatalf("read: %v after %v; want a timeout at 200ms", err, d)
	}
}

// TestLazyDeadlineWrite: a write deadline moved later is honoured, and a
// peer that does not read ends the writes at it, with what was written
// counted.
func TestLazyDeadlineWrite(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	lc := NewConn(c)
	start := time.Now()
	lc.SetWriteDeadline(start.Add(50 * time.Millisecond))
	lc.SetWriteDeadline(start.Add(400 * time.Millisecond))
	buf := make([]byte, 64<<10)
	for i := 0; ; i++ {
		n, err := lc.Write(buf)
		if err != nil {
			if d := time.Since(start); !isTimeout(err) || d < 400*time.Millisecond || d > 5*time.Second {
				t.Fatalf("write: %v after %v; want a timeout at 400ms", err, d)
			}
			if n >= len(buf) {
				t.Fatalf("a failed write reports %d of %d bytes", n, len(buf))
			}
			return
		}
		if i > 16<<10 { // 1 GiB: no socket buffer is that large
			t.Fatal("writes to a peer that does not read never failed")
		}
	}
}

// TestLazyDeadlineArmsOnce: a keep-alive connection's deadlines, set again
// for each request a little later each time, are armed by the first request
// (the read deadline twice: the idle wait's, then the request's, earlier),
// not by each.
func TestLazyDeadlineArmsOnce(t *testing.T) {
	c, peer := tcpPair(t)
	ac := &armCounter{Conn: c}
	lc := &Conn{Conn: ac}
	buf := make([]byte, 8)
	for range 1000 {
		// What fasthttp's server does per request: the idle wait, the
		// request's read deadline, the answer's write deadline.
		now := time.Now()
		lc.SetReadDeadline(now.Add(2 * time.Minute))
		lc.SetReadDeadline(now.Add(30 * time.Second))
		lc.SetWriteDeadline(now.Add(30 * time.Second))
		if _, err := peer.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := lc.Read(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := lc.Write(buf[:1]); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if r, w := ac.reads.Load(), ac.writes.Load(); r != 2 || w != 1 {
		t.Fatalf("1000 requests armed %d read and %d write deadlines; want 2 and 1", r, w)
	}
}
