package netio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// describe is what a caller can tell of err from c: its message (with c's
// addresses named L and R), its types down the chain, the *net.OpError's
// fields, and whether it is a timeout.
func describe(c net.Conn, err error) string {
	if err == nil {
		return "nil"
	}
	msg := strings.ReplaceAll(err.Error(), c.LocalAddr().String(), "L")
	msg = strings.ReplaceAll(msg, c.RemoteAddr().String(), "R")
	var types []string
	for e := err; e != nil; e = errors.Unwrap(e) {
		types = append(types, fmt.Sprintf("%T", e))
	}
	d := fmt.Sprintf("%q %s", msg, strings.Join(types, " > "))
	var op *net.OpError
	if errors.As(err, &op) {
		d += fmt.Sprintf(" op=%s net=%s source=%v addr=%v", op.Op, op.Net, op.Source != nil && op.Source.String() == c.LocalAddr().String(),
			op.Addr != nil && op.Addr.String() == c.RemoteAddr().String())
	}
	var ne net.Error
	return d + fmt.Sprintf(" timeout=%t deadline=%t closed=%t", errors.As(err, &ne) && ne.Timeout(),
		errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed))
}

// A Conn's read and write errors are those of the net.Conn it wraps, raw
// system calls or not: the same *net.OpError (op, net, both addresses),
// the same error inside (an *os.SyscallError for a reset or broken pipe),
// the same message, and a timeout that is os.ErrDeadlineExceeded.
func TestErrorsAsNetConn(t *testing.T) {
	past := time.Now().Add(-time.Second)
	for _, c := range []struct {
		name string
		do   func(c, peer net.Conn) error
	}{
		{"read deadline", func(c, peer net.Conn) error {
			c.SetReadDeadline(past)
			_, err := c.Read(make([]byte, 16))
			return err
		}},
		{"write deadline", func(c, peer net.Conn) error {
			c.SetWriteDeadline(past)
			_, err := c.Write([]byte("x"))
			return err
		}},
		{"read reset", func(c, peer net.Conn) error {
			peer.(*net.TCPConn).SetLinger(0) // close sends a reset
			peer.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := c.Read(make([]byte, 16))
			return err
		}},
		{"write after reset", func(c, peer net.Conn) error {
			peer.(*net.TCPConn).SetLinger(0)
			peer.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 16)) // the reset
			_, err := c.Write([]byte("x"))
			return err
		}},
		{"read closed", func(c, peer net.Conn) error {
			c.Close()
			_, err := c.Read(make([]byte, 16))
			return err
		}},
		{"write closed", func(c, peer net.Conn) error {
			c.Close()
			_, err := c.Write([]byte("x"))
			return err
		}},
	} {
		plain, peer := tcpPair(t)
		want := describe(plain, c.do(plain, peer))
		plain, peer = tcpPair(t)
		w := NewConn(plain)
		got := describe(plain, c.do(w, peer))
		if got != want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, want)
		}
	}
}
