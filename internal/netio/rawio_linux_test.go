package netio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func rawPair(t *testing.T) (*rawIO, net.Conn) {
	t.Helper()
	c, peer := tcpPair(t)
	r := newRawIO(c)
	if r == nil {
		t.Fatal("no raw I/O for a TCP connection")
	}
	return r, peer
}

// TestRawIOLargeWrite: a write larger than the socket buffers, to a peer
// that reads slowly, waits for room and delivers every byte in order; the
// peer's data comes back through Read whole.
func TestRawIOLargeWrite(t *testing.T) {
	r, peer := rawPair(t)
	want := make([]byte, 8<<20)
	rand.Read(want)
	got := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 32<<10)
		for b.Len() < len(want) {
			peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := peer.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
			if b.Len() < 1<<20 {
				time.Sleep(time.Millisecond) // slow at first: the writer must wait for room
			}
		}
		got <- b.Bytes()
		peer.Write(b.Bytes()[:64<<10]) // and answer
	}()
	if n, err := r.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write: %d of %d, %v", n, len(want), err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the peer got %d bytes, not the %d written", len(b), len(want))
	}
	back := make([]byte, 64<<10)
	if _, err := io.ReadFull(r, back); err != nil || !bytes.Equal(back, want[:64<<10]) {
		t.Fatalf("Read: %v", err)
	}
}

// TestRawIOEnds: the end of the peer's stream is io.EOF, and a connection
// the peer reset fails reads and writes with an error.
func TestRawIOEnds(t *testing.T) {
	r, peer := rawPair(t)
	peer.Write([]byte("last"))
	peer.Close()
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "last" {
		t.Fatalf("ReadAll: %q, %v", b, err)
	}

	r, peer = rawPair(t)
	peer.(*net.TCPConn).SetLinger(0) // close with RST
	peer.Close()
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		_, werr = r.Write([]byte("x"))
		time.Sleep(time.Millisecond)
	}
	if werr == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
	if _, err := r.Read(make([]byte, 8)); err == nil {
		t.Fatal("read of a reset connection succeeded")
	}
}

// TestRawIOClose: Close ends a read waiting for data, as net.Conn's does,
// and a write at the same time as the read goes through.
func TestRawIOClose(t *testing.T) {
	c, peer := tcpPair(t)
	r := newRawIO(c)
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 8))
		done <- err
	}()
	if _, err := r.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read ended with %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the read")
	}
}

// TestDetachFDAndBack: a dialed connection taken off the poller keeps
// working on its descriptor, and FileConn gives it back as a net.Conn.
func TestDetachFDAndBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		b := make([]byte, 5)
		io.ReadFull(c, b)
		c.Write([]byte("pong"))
		got <- string(b)
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fd, err := DetachFD(nc)
	if err != nil {
		t.Fatal(err)
	}
	if n, errno := RawWrite(fd, []byte("hello")); n != 5 || errno != 0 {
		t.Fatalf("RawWrite: %d, %v", n, errno)
	}
	if s := <-got; s != "hello" {
		t.Fatalf("the server read %q", s)
	}
	back, err := FileConn(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	back.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 4)
	if _, err := io.ReadFull(back, b); err != nil || string(b) != "pong" {
		t.Fatalf("read %q, %v", b, err)
	}
}
