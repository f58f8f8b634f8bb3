package drain

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
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

// addPending adds fetched messages to the batch being filled.
func (r *runner) addPending(got []*store.Delivery, now time.Time) {
	if len(got) == 0 {
		return
	}
	if len(r.pending) == 0 {
		r.pendingSince = now
	}
	for _, dl := range got {
		r.pending = append(r.pending, dl)
		r.pendingBytes += int64(len(dl.Body)) + 1
	}
}

// releasePending gives every message of the batch being filled back to the
// source, unsent.
func (r *runner) releasePending() {
	for _, dl := range r.pending {
		r.d.src.Release(dl)
	}
	clear(r.pending)
	r.pending, r.pendingBytes = r.pending[:0], 0
	for _, dl := range r.ahead {
		r.d.src.Release(dl)
	}
	clear(r.ahead)
	r.ahead = r.ahead[:0]
}

// startBatch takes a token and a slot and sends the first messages of the
// pending batch, as many as MaxBytes allows (at least one), in a new
// goroutine. If a control call came in since gen it sends nothing: the run
// loop looks at the rate again first.
func (r *runner) startBatch(now time.Time, gen uint64) {
	d := r.d
	if d.control.Load() != gen || (r.lim != nil && !r.lim.AllowN(now, 1)) {
		return
	}
	limit := d.target.Batch.MaxBytes
	n, size := 0, int64(0)
	for _, dl := range r.pending {
		line := int64(len(dl.Body)) + 1 // compaction only shrinks
		if n > 0 && size+line > limit {
			break
		}
		n++
		size += line
	}
	batch := make([]*store.Delivery, n)
	copy(batch, r.pending[:n])
	rest := copy(r.pending, r.pending[n:])
	clear(r.pending[rest:])
	r.pending = r.pending[:rest]
	r.pendingBytes -= size
	// What is left has waited since pendingSince already; it goes next.

	r.sending++
	d.slots.Add(1) // TryDirect takes no slot of a batch target: no race
	r.outstanding++
	go d.attemptBatch(batch, r.br.Started(now), r.events)
}

// attemptBatch sends one batch, records the outcome of every message in it
// and tells the run loop.
func (d *Drainer) attemptBatch(batch []*store.Delivery, probe bool, events chan<- event) {
	var body bytes.Buffer
	var sent, refused []*store.Delivery
	maxAttempt := 0
	for _, dl := range batch {
		line, err := ndjsonLine(dl.Body)
		if err != nil {
			refused = append(refused, dl)
			continue
		}
		body.Write(line)
		body.WriteByte('\n')
		sent = append(sent, dl)
		maxAttempt = max(maxAttempt, dl.Attempt)
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
	for range refused {
		outs = append(outs, store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Error: errNotOneLine.Error()}})
	}
	all := append(sent, refused...)

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
		log := d.log.With("seq", dl.ID.Seq(), "attempt", dl.Attempt, "status", res.status, "batch", len(sent))
		switch {
		case err != nil:
			d.unrecorded.Add(1)
			unrecorded = append(unrecorded, dl)
			log.Error("cannot record the outcome; the message stays in flight until the drainer stops, then is attempted again",
				"outcome", string(out.Phase), "err", err)
		case out.Phase == store.Delivered:
			d.delivered.Add(1)
			d.countClass(OutcomeDelivered, res.status)
		case out.Phase == store.Retrying:
			d.retried.Add(1)
			d.countClass(OutcomeRetried, res.status)
			retrying = true
			if i == 0 {
				log.Info("batch failed; will retry it", "err", out.Attempt.Error, "next_try", out.NextTry)
			}
		default:
			d.dead.Add(1)
			d.countClass(OutcomeDead, res.status)
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
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.DisableNormalizing()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(d.ep.batchURI())
	req.URI().SetScheme(d.ep.scheme)
	req.URI().SetHost(d.ep.host)
	req.Header.SetHost(d.ep.host)
	req.Header.SetContentType(ContentTypeNDJSON)
	req.Header.Set(HeaderBatchSize, strconv.Itoa(n))
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	req.SetBodyRaw(body)
	return d.do(req, resp, 0) // the answer's body is not used
}
