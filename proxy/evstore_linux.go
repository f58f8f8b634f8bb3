//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/store"
)

// Buffer-route requests on the event loops: a request the loop accepts
// (evparse.go) for a buffer route of the http protocol is stored without a
// goroutine per connection. The loop parses it into a fasthttp.RequestCtx
// of its own, so that prepareBuffer, answerBuffer, observe and the error
// bodies are the fasthttp path's, not a copy of them; it collects the
// requests of one epoll turn per queue and hands each queue's to the store
// in one AppendDrafts call, on a goroutine of that batch (the call blocks
// until the group commit). The results are posted back to the loop, which
// answers each request, 202 only for a draft that AppendDrafts stored (or
// found a duplicate of), and writes the answers as the fasthttp server
// would (TestEventLoopStoreParity compares the two).
//
// A connection whose request waits for its commit reads no further
// request: what the client pipelines stays in its buffer (up to
// maxPipelined) until the answer is written, so answers keep their order.
// Each request keeps its RequestCtx, whose bytes its draft refers to, until
// AppendDrafts returned; the loop's own buffers are reused at once.

// storeReq is one buffer-route request the loop stores: its RequestCtx, its
// draft and what prepareBuffer found, and the connection it came on.
type storeReq struct {
	ctx   fasthttp.RequestCtx
	db    draftBuf
	c     *clientConn
	seq   uint64 // c.seq when it came: a connection closed and its descriptor reused is not answered
	rt    *route
	start time.Time // when it had come whole, for the Observer
}

// storeBatch is the requests of one turn for one queue, and, once
// committed, AppendDrafts' results for them.
type storeBatch struct {
	q    store.BatchAppender
	reqs []*storeReq
	ds   []*store.Draft
	ids  []store.ID
	errs []error
}

// maxFreeReqs bounds the storeReqs a loop keeps for reuse (each with a
// body buffer of up to keepBuf).
const maxFreeReqs = 1024

// stores is an event loop's part in storing requests.
type stores struct {
	batches   []*storeBatch // this turn's, one per queue, committed at its end
	freeReqs  []*storeReq
	freeBatch []*storeBatch
	src       bytes.Reader
	br        *bufio.Reader // over src: the request's head and body for fasthttp's parser
}

// loopPeer is a client connection's address as the RequestCtx of its
// requests reports it (RemoteAddr, for X-Forwarded-For). Nothing else of the
// connection is used: the loop reads and writes the socket itself.
type loopPeer struct {
	net.Conn
	addr net.TCPAddr
}

func (p *loopPeer) RemoteAddr() net.Addr { return &p.addr }
func (p *loopPeer) LocalAddr() net.Addr  { return &net.TCPAddr{} }

func (l *evloop) getReq() *storeReq {
	if n := len(l.freeReqs); n > 0 {
		sr := l.freeReqs[n-1]
		l.freeReqs[n-1] = nil
		l.freeReqs = l.freeReqs[:n-1]
		return sr
	}
	return new(storeReq)
}

func (l *evloop) putReq(sr *storeReq) {
	sr.ctx.Request.ReleaseBody(keepBuf) // a large body does not stay with the free list
	sr.ctx.Request.Reset()
	sr.ctx.Response.Reset()
	sr.ctx.ResetUserValues()
	sr.db.reset()
	sr.c, sr.rt = nil, nil
	if len(l.freeReqs) < maxFreeReqs {
		l.freeReqs = append(l.freeReqs, sr)
	}
}

// store takes the request at the start of b (whole, parsed in l.req) for
// buffer route rt: it refuses it at once, or adds it to this turn's batch
// of rt's queue.
func (l *evloop) store(c *clientConn, b []byte, rt *route) {
	s := l.e.s
	r := &l.req
	if r.Size > int(s.maxHeader) {
		l.handOff(c, b) // the fasthttp path answers 431
		return
	}
	if l.br == nil {
		l.br = bufio.NewReaderSize(&l.src, int(s.maxHeader))
	}
	if c.peer == nil {
		c.peer = &loopPeer{addr: net.TCPAddr{IP: c.ip.AsSlice(), Port: int(c.port)}}
	}
	sr := l.getReq()
	ctx := &sr.ctx
	ctx.Init2(c.peer, fasthttpLogger{s.log}, false)
	l.src.Reset(b[:r.total()])
	l.br.Reset(&l.src)
	err := ctx.Request.Header.Read(l.br)
	if err == nil {
		err = ctx.Request.ContinueReadBody(l.br, int(min(rt.MaxBody, wholeBodyMax)), false)
	}
	if err != nil || ctx.Request.Header.ConnectionClose() != r.conn.Close {
		l.putReq(sr) // what the strict parser took, fasthttp's did not read alike: its server decides
		l.handOff(c, b)
		return
	}
	c.seq++
	c.closeAfter = r.conn.Close
	if rest := b[r.total():]; len(rest) > 0 {
		c.in = append(c.in[:0], rest...)
	} else {
		c.in = c.in[:0]
	}
	sr.c, sr.seq, sr.rt = c, c.seq, rt
	sr.start = time.Now()
	// The normalised request-URI of the RequestCtx's own bytes: the
	// draft may refer to it until the commit.
	uri, _ := normalizeURI(ctx.Request.Header.RequestURI())
	if !s.prepareBuffer(ctx, rt, uri, &sr.db) {
		l.answerStored(sr)
		return
	}
	c.state = clientStoring
	c.deadline = time.Time{} // the commit is awaited, as on the fasthttp path
	q := rt.queue.(store.BatchAppender)
	var bt *storeBatch
	for _, x := range l.batches {
		if x.q == q {
			bt = x
			break
		}
	}
	if bt == nil {
		if n := len(l.freeBatch); n > 0 {
			bt = l.freeBatch[n-1]
			l.freeBatch = l.freeBatch[:n-1]
		} else {
			bt = new(storeBatch)
		}
		bt.q = q
		l.batches = append(l.batches, bt)
	}
	bt.reqs = append(bt.reqs, sr)
}

// commit hands each of this turn's batches to the store, on a goroutine of
// its own, which posts the results back to the loop.
func (l *evloop) commit() {
	for i, bt := range l.batches {
		l.batches[i] = nil
		bt.ds = bt.ds[:0]
		for _, sr := range bt.reqs {
			bt.ds = append(bt.ds, &sr.db.d)
		}
		l.e.appends.Add(1)
		go func() {
			defer l.e.appends.Done()
			bt.ids, bt.errs = bt.q.AppendDrafts(l.e.s.appendCtx, bt.ds)
			l.post(func(l *evloop) { l.committed(bt) })
		}()
	}
	l.batches = l.batches[:0]
}

// committed answers the requests of a batch whose AppendDrafts returned.
// On a loop that has ended (shutdown gave up waiting) their connections are
// closed already: nothing is answered.
func (l *evloop) committed(bt *storeBatch) {
	for i, sr := range bt.reqs {
		bt.reqs[i] = nil
		c := sr.c
		if l.stopped || l.fds.get(c.fd) != c || c.seq != sr.seq || c.state != clientStoring {
			l.putReq(sr) // the client is gone
			continue
		}
		l.e.s.answerBuffer(&sr.ctx, sr.rt, &sr.db, bt.ids[i], bt.errs[i])
		l.answerStored(sr)
	}
	clear(bt.ds)
	bt.reqs, bt.ds, bt.ids, bt.errs, bt.q = bt.reqs[:0], bt.ds[:0], nil, nil, nil
	if !l.stopped {
		l.freeBatch = append(l.freeBatch, bt)
	}
}

// answerStored writes the answer in sr's RequestCtx to its client, as the
// fasthttp server writes it (Server, Date, Content-Length, Connection:
// close when the connection ends with it), and tells the Observer.
func (l *evloop) answerStored(sr *storeReq) {
	c, ctx := sr.c, &sr.ctx
	l.e.s.observe(ctx, sr.rt, sr.start)
	res := &ctx.Response
	closing := c.closeAfter || c.eof || l.e.closing.Load() || res.ConnectionClose()
	if closing {
		res.SetConnectionClose()
	}
	if len(res.Header.Server()) == 0 {
		res.Header.SetServer("sluice")
	}
	body := res.Body()
	res.Header.SetContentLength(len(body))
	c.outBuf = append(res.Header.AppendBytes(c.outBuf[:0]), body...)
	c.out = c.outBuf
	c.closeAfter = closing
	l.putReq(sr)
	c.state = clientWriting
	l.setDeadline(c, l.e.s.srv.WriteTimeout)
	l.e.stored.Add(1)
	l.flushClient(c)
}
