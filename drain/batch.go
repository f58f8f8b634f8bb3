package drain

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// Headers of a batch request.
const (
	HeaderBatchSize   = "X-Sluice-Batch-Size" // how many messages (lines) the body holds
	ContentTypeNDJSON = "application/x-ndjson"
)

// errNotOneLine is the reason a message is refused from an NDJSON batch.
var errNotOneLine = errors.New("batch ndjson: the body has a line break and is not JSON, so it cannot be sent as one NDJSON line")

// completeParallel bounds the outcomes of one batch recorded at once.
const completeParallel = 64

// ndjsonLine returns body as one NDJSON line (without the newline): as it is
// if it has no line break, compacted (encoding/json.Compact) if it has one
// and is JSON, which removes every line break (JSON strings cannot hold
// one). Any other body with a line break cannot be one line: errNotOneLine.
func ndjsonLine(body []byte) ([]byte, error) {
	if bytes.IndexByte(body, '\n') < 0 && bytes.IndexByte(body, '\r') < 0 {
		return body, nil
	}
	if !json.Valid(body) {
		return nil, errNotOneLine
	}
	var b bytes.Buffer
	b.Grow(len(body))
	if err := json.Compact(&b, body); err != nil {
		return nil, errNotOneLine
	}
	return b.Bytes(), nil
}

// storedBy reports whether a message was stored by a route of the given log
// protocol (logproto.HeaderProtocol).
func storedBy(dl *store.Delivery, protocol string) bool {
	for _, h := range dl.Header {
		if h.Name == logproto.HeaderProtocol {
			return h.Value == protocol
		}
	}
	return false
}

// batchLine returns a message's body as one NDJSON line (ndjsonLine), its
// Content-Encoding (gzip, deflate) undone first: a compressed body stored
// by an http route would otherwise go into a line as binary, or be dead for
// a compressed byte that is a line break. A body that does not decode is
// refused with the reason.
func batchLine(dl *store.Delivery) ([]byte, error) {
	body := dl.Body
	for _, h := range dl.Header {
		if strings.EqualFold(h.Name, "Content-Encoding") {
			if enc := strings.ToLower(strings.TrimSpace(h.Value)); enc != "" && enc != "identity" {
				b, err := logproto.Decode(body, enc, store.MaxRecordBytes)
				if err != nil {
					return nil, fmt.Errorf("batch: the body's Content-Encoding %.20q cannot be undone: %v", h.Value, err)
				}
				body = b
			}
			break
		}
	}
	return ndjsonLine(body)
}

// batchFeeder is the feeder of a batch target (Target.Batch): one
// request, one token, up to Batch.MaxMessages messages.
type batchFeeder struct {
	r *runner

	byteLim      *rate.Limiter     // Target.ByteRate; nil if unlimited
	pending      []*store.Delivery // fetched for the next batch, not yet sent
	pendingBytes int64             // their bodies' bytes, one newline each included
	pendingSince time.Time         // when the first of them was fetched
}

func (f *batchFeeder) prepare(turn) {}

func (f *batchFeeder) holding() bool { return len(f.pending) > 0 }

// release gives every message of the batch being filled back to the
// source, unsent.
func (f *batchFeeder) release() {
	for _, dl := range f.pending {
		f.r.d.src.Release(dl)
	}
	clear(f.pending)
	f.pending, f.pendingBytes = f.pending[:0], 0
}

// addPending adds fetched messages to the batch being filled.
func (f *batchFeeder) addPending(got []*store.Delivery, now time.Time) {
	if len(got) == 0 {
		return
	}
	if len(f.pending) == 0 {
		f.pendingSince = now
	}
	for _, dl := range got {
		f.pending = append(f.pending, dl)
		f.pendingBytes += int64(len(dl.Body)) + 1
	}
}

// round fills the pending batch (unless idle), then sends it once it is
// full or its first message has waited MaxWait.
func (f *batchFeeder) round(t turn) (rd round) {
	if t.free <= 0 {
		return rd
	}
	d, bt, now := f.r.d, f.r.d.target.Batch, t.now
	k, wait := f.r.tokens(now, t.free)
	if k == 0 {
		rd.wake = now.Add(wait)
		return rd
	}
	if want := bt.MaxMessages - len(f.pending); !t.idle && want > 0 {
		got, err := d.src.Fetch(want, now)
		rd.fetched = true
		f.addPending(got, now)
		if err != nil {
			rd.err = err
			return rd
		}
		rd.short = len(got) < want
	}
	if len(f.pending) > 0 {
		due := f.pendingSince.Add(bt.MaxWait)
		if len(f.pending) >= bt.MaxMessages || f.pendingBytes >= bt.MaxBytes || !now.Before(due) {
			wait := f.startBatch(now, t.gen)
			if wait == 0 {
				return round{fetched: rd.fetched, more: true}
			}
			due = now.Add(wait) // byte_rate: the batch waits for its bytes
		}
		rd.wake = due
	}
	return rd
}

// startBatch takes a token and a slot and sends the first messages of the
// pending batch, as many as MaxBytes allows (at least one), in a new
// goroutine. If a control call came in since gen it sends nothing: the run
// loop looks at the rate again first. With a byte_rate it returns how long
// the batch must wait for its bytes (and sends nothing); else 0.
func (f *batchFeeder) startBatch(now time.Time, gen uint64) time.Duration {
	r, d := f.r, f.r.d
	limit := d.target.Batch.MaxBytes
	n, size := 0, int64(0)
	for _, dl := range f.pending {
		line := int64(len(dl.Body)) + 1 // compaction only shrinks
		if n > 0 && size+line > limit {
			break
		}
		n++
		size += line
	}
	if d.control.Load() != gen {
		return 0
	}
	var bytes *rate.Reservation
	if br := d.target.ByteRate; br > 0 {
		if f.byteLim == nil {
			// Burst: one second of the rate, and at least one full batch.
			f.byteLim = rate.NewLimiter(rate.Limit(br), int(max(br, limit, size)))
		}
		bytes = f.byteLim.ReserveN(now, int(size))
		if !bytes.OK() { // a batch larger than the burst (one huge message): let it pass alone
			f.byteLim.SetBurstAt(now, int(size))
			bytes = f.byteLim.ReserveN(now, int(size))
		}
		if wait := bytes.DelayFrom(now); wait > 0 {
			bytes.CancelAt(now)
			return wait + time.Microsecond
		}
	}
	if r.lim != nil && !r.lim.AllowN(now, 1) {
		if bytes != nil {
			bytes.CancelAt(now)
		}
		return 0
	}
	batch := make([]*store.Delivery, n)
	copy(batch, f.pending[:n])
	rest := copy(f.pending, f.pending[n:])
	clear(f.pending[rest:])
	f.pending = f.pending[:rest]
	f.pendingBytes -= size
	// What is left has waited since pendingSince already; it goes next.

	r.sending++
	d.slots.Add(1) // TryDirect takes no slot of a batch target: no race
	r.outstanding++
	go d.attemptBatch(batch, r.br.Started(now), r.events)
	return 0
}

// attemptBatch sends one batch, records the outcome of every message in it
// and tells the run loop.
func (d *Drainer) attemptBatch(batch []*store.Delivery, probe bool, events chan<- event) {
	switch d.target.Protocol {
	case policies.ProtocolElasticsearchBulk:
		d.attemptBulk(batch, probe, events)
		return
	case policies.ProtocolOTLP:
		d.attemptOTLP(batch, probe, events)
		return
	case policies.ProtocolSplunkHEC:
		d.attemptHEC(batch, probe, events)
		return
	}
	var body bytes.Buffer
	var sent, refused []*store.Delivery
	var refusedErr []error
	maxAttempt := 0
	if d.target.Protocol == policies.ProtocolLoki {
		// One push request: the entries grouped into streams by labels;
		// Loki answers for the push as a whole.
		docs := make([]logproto.LokiDoc, len(batch))
		for i, dl := range batch {
			docs[i] = logproto.LokiDoc{Body: dl.Body, At: dl.EnqueuedAt, Entry: storedBy(dl, policies.ProtocolLoki)}
			maxAttempt = max(maxAttempt, dl.Attempt)
		}
		body.Write(logproto.AppendLokiPush(nil, docs))
		sent = batch
	} else {
		for _, dl := range batch {
			line, err := batchLine(dl)
			if err != nil {
				refused, refusedErr = append(refused, dl), append(refusedErr, err)
				continue
			}
			body.Write(line)
			body.WriteByte('\n')
			sent = append(sent, dl)
			maxAttempt = max(maxAttempt, dl.Attempt)
		}
	}
	var res result
	if len(sent) > 0 {
		res = d.sendBatch(len(sent), maxAttempt, body.Bytes())
	}
	events <- event{res: res, probe: probe, none: len(sent) == 0}

	outs := make([]store.Outcome, 0, len(batch))
	if len(sent) > 0 {
		// One verdict for the whole batch, one retry time for all of it, so
		// the batch comes back together; only the count of attempts differs.
		d.rndMu.Lock()
		rnd := d.rnd()
		d.rndMu.Unlock()
		judged, retryable := judge(&d.target, res)
		nextTry := res.at.Add(res.dur).Add(Backoff(d.target.Retry, maxAttempt, res.retryAfter, rnd))
		for _, dl := range sent {
			out := judged
			if out.Phase != store.Delivered {
				out = finish(&d.target, judged, retryable, dl.Attempt, nextTry)
			}
			outs = append(outs, out)
		}
	}
	now := d.now()
	for _, err := range refusedErr {
		outs = append(outs, store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Error: err.Error()}})
	}
	d.recordOutcomes(append(sent, refused...), outs, res.status, len(sent), events)
}

// recordOutcomes records outs[i] for all[i], logs and counts them, makes the
// callbacks and tells the run loop. status is the batch request's HTTP
// status (for the log); sent is how many messages it carried.
func (d *Drainer) recordOutcomes(all []*store.Delivery, outs []store.Outcome, status, sent int, events chan<- event) {
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	sem := make(chan struct{}, completeParallel)
	for i, dl := range all {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = d.record(dl, outs[i])
		}()
	}
	wg.Wait()

	retrying := false
	var unrecorded []*store.Delivery
	for i, dl := range all {
		out, err := outs[i], errs[i]
		log := d.log.With("seq", dl.ID.Seq(), "attempt", dl.Attempt, "status", status, "batch", sent)
		class := status // the request's; an item's own where the store answered item by item
		if out.Attempt.Status != 0 {
			class = out.Attempt.Status
		}
		switch {
		case err != nil:
			d.unrecorded.Add(1)
			unrecorded = append(unrecorded, dl)
			log.Error("cannot record the outcome; the message stays in flight until the drainer stops, then is attempted again",
				"outcome", string(out.Phase), "err", err)
		case out.Phase == store.Delivered:
			d.delivered.Add(1)
			d.countClass(OutcomeDelivered, class)
		case out.Phase == store.Retrying:
			d.retried.Add(1)
			d.countClass(OutcomeRetried, class)
			if !retrying {
				log.Info("batch failed, whole or in part; will retry what failed", "err", out.Attempt.Error, "next_try", out.NextTry)
			}
			retrying = true
		default:
			d.dead.Add(1)
			d.countClass(OutcomeDead, class)
			log.Warn("message is dead", "err", out.Attempt.Error)
		}
		if err == nil {
			d.callback(dl, &out)
		}
	}
	events <- event{recorded: true, retrying: retrying, unrecorded: unrecorded}
}

// sendBatch makes one HTTP attempt of a batch of n messages whose highest
// attempt number is attempt.
func (d *Drainer) sendBatch(n, attempt int, body []byte) result {
	path, contentType := d.ep.batchURI(), ContentTypeNDJSON
	if d.target.Protocol == policies.ProtocolLoki {
		path, contentType = withSuffix(d.ep.path, logproto.LokiPushPath)+query(d.ep.query), "application/json"
	}
	res, _ := d.postBatch(path, contentType, n, attempt, body, false)
	return res
}

// postBatch makes one POST of a batch of n documents (attempt: the
// highest attempt number among them) to uri on the target, with the
// target's headers and compression, and returns the result and, with
// readReply, a copy of the reply's body (read whole, up to 16 MiB);
// without it the body is discarded as it arrives.
func (d *Drainer) postBatch(uri, contentType string, n, attempt int, body []byte, readReply bool) (result, []byte) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.DisableNormalizing()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(uri)
	req.URI().SetScheme(d.ep.scheme)
	req.URI().SetHost(d.ep.host)
	req.Header.SetHost(d.ep.host)
	req.Header.SetContentType(contentType)
	req.Header.Set(HeaderBatchSize, strconv.Itoa(n))
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	d.setBatchBody(req, body)
	if !readReply {
		return d.do(req, resp, 0), nil // the answer's body is not used
	}
	res := d.do(req, resp, -1)
	var reply []byte
	if res.err == nil && !res.tooLarge {
		reply = bytes.Clone(resp.Body())
	}
	return res, reply
}

// withSuffix returns path ending in suffix (unchanged if it does).
func withSuffix(path, suffix string) string {
	if strings.HasSuffix(path, suffix) {
		return path
	}
	return path + suffix
}

// query returns "?q" for a query q, or "".
func query(q string) string {
	if q == "" {
		return ""
	}
	return "?" + q
}

// setBatchBody sets a batch request's body, gzipped if the target asks,
// and the target's own headers.
func (d *Drainer) setBatchBody(req *fasthttp.Request, body []byte) {
	d.ep.setHeaders(req)
	if d.target.Compression != policies.CompressionGzip {
		req.SetBodyRaw(body)
		return
	}
	zw := gzipPool.Get().(*gzip.Writer)
	var buf bytes.Buffer
	buf.Grow(len(body)/4 + 64)
	zw.Reset(&buf)
	zw.Write(body) // a bytes.Buffer does not fail
	zw.Close()
	gzipPool.Put(zw)
	req.Header.Set("Content-Encoding", "gzip")
	req.SetBodyRaw(buf.Bytes())
}

var gzipPool = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // logs compress ~5-10x even at the fastest level
	return zw
}}
