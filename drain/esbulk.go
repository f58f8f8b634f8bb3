package drain

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/store"
)

// A target with protocol elasticsearch-bulk gets its batches as _bulk
// requests: each message is an action line and its document. The action is
// the one the message was stored with (an elasticsearch route keeps it; see
// logproto.HeaderOp), else create; its _id is the document's own or the
// message id, so that a batch delivered twice (a crash before its outcome
// was recorded, a retry after a lost reply) writes each document once. The
// store's reply is read item by item: an item that failed with a status the
// target retries (429 and 5xx by default) is retried alone, with its own
// backoff; an item that failed otherwise is dead, with the store's reason;
// a 409 for a create with sluice's _id means an earlier attempt wrote it,
// and counts as delivered. A 2xx reply that cannot be read as a bulk reply
// is retried whole: nothing is taken for delivered without the store saying
// so.

// errNotObject refuses a message that cannot be a document.
var errNotObject = errors.New("elasticsearch-bulk: the body is not a JSON object, so it cannot be a document")

// esHeaders returns a stored document's action: op, metadata and own _id.
func esHeaders(h []store.Header) (op string, meta, id []byte) {
	for _, f := range h {
		switch f.Name {
		case logproto.HeaderOp:
			op = f.Value
		case logproto.HeaderMeta:
			meta = []byte(f.Value)
		case logproto.HeaderID:
			id = []byte(f.Value)
		}
	}
	return op, meta, id
}

// attemptBulk is attemptBatch for elasticsearch-bulk targets.
func (d *Drainer) attemptBulk(batch []*store.Delivery, probe bool, events chan<- event) {
	var body bytes.Buffer
	var sent, refused []*store.Delivery
	var refusedErr []error
	var ownID []bool // per sent message: its _id is the document's own
	var ops []string
	maxAttempt := 0
	var action []byte
	for _, dl := range batch {
		line, err := batchLine(dl)
		if err == nil && (len(line) == 0 || line[0] != '{') {
			err = errNotObject
		}
		if err != nil {
			refused = append(refused, dl)
			refusedErr = append(refusedErr, err)
			continue
		}
		op, meta, id := esHeaders(dl.Header)
		if op == "" {
			op = logproto.OpCreate
		}
		action = logproto.AppendAction(action[:0], op, meta, id, dl.ID.String())
		body.Write(action)
		body.Write(line)
		body.WriteByte('\n')
		sent = append(sent, dl)
		ownID = append(ownID, len(id) > 0)
		ops = append(ops, op)
		maxAttempt = max(maxAttempt, dl.Attempt)
	}
	var res result
	var reply []byte
	if len(sent) > 0 {
		res, reply = d.sendBulk(len(sent), maxAttempt, body.Bytes())
	}

	outs := make([]store.Outcome, 0, len(batch))
	signal := res // what the run loop learns about the target (adaptive rate, breaker)
	if len(sent) > 0 {
		d.rndMu.Lock()
		rnd := d.rnd()
		d.rndMu.Unlock()
		judged, retryable := judge(&d.target, res)
		whole := func(out store.Outcome, retryable bool) {
			nextTry := res.at.Add(res.dur).Add(Backoff(d.target.Retry, maxAttempt, res.retryAfter, rnd))
			for _, dl := range sent {
				outs = append(outs, finish(&d.target, out, retryable, dl.Attempt, nextTry))
			}
		}
		switch {
		case judged.Phase != store.Delivered:
			whole(judged, retryable)
		default:
			items, allOK, err := logproto.ParseBulkReply(reply, len(sent))
			switch {
			case err != nil:
				judged.Phase = ""
				judged.Attempt.Error = "status " + strconv.Itoa(res.status) + " but " + err.Error()
				signal.status = fasthttp.StatusBadGateway // a failure, for the breaker
				whole(judged, true)
			case allOK:
				for range sent {
					outs = append(outs, judged)
				}
			default:
				for i, dl := range sent {
					out := d.itemOutcome(res, items[i], ops[i], ownID[i], dl.Attempt, rnd)
					if items[i].Status == fasthttp.StatusTooManyRequests {
						signal.status = fasthttp.StatusTooManyRequests // congestion, for the adaptive rate
					}
					outs = append(outs, out)
				}
			}
		}
	}
	events <- event{res: signal, probe: probe, none: len(sent) == 0}
	now := d.now()
	for _, err := range refusedErr {
		outs = append(outs, store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Error: err.Error()}})
	}
	d.recordOutcomes(append(sent, refused...), outs, res.status, len(sent), events)
}

// itemOutcome judges one item of a bulk reply.
func (d *Drainer) itemOutcome(res result, it logproto.ItemResult, op string, ownID bool, attempt int, rnd float64) store.Outcome {
	out := store.Outcome{Attempt: store.Attempt{At: res.at, Status: it.Status, Duration: res.dur}}
	switch {
	case it.Status >= 200 && it.Status <= 299:
		out.Phase = store.Delivered
		return out
	case it.Status == fasthttp.StatusConflict && op == logproto.OpCreate && !ownID:
		// The _id is this message's: an earlier attempt wrote it.
		out.Phase = store.Delivered
		return out
	}
	out.Attempt.Error = fmt.Sprintf("elasticsearch item status %d", it.Status)
	if it.Type != "" {
		out.Attempt.Error += " " + it.Type
	}
	if it.Reason != "" {
		out.Attempt.Error += ": " + it.Reason
	}
	nextTry := res.at.Add(res.dur).Add(Backoff(d.target.Retry, attempt, 0, rnd))
	return finish(&d.target, out, d.target.Retry.On.Status(it.Status), attempt, nextTry)
}

// sendBulk makes one _bulk attempt of n documents and returns the result and
// a copy of the reply's body.
func (d *Drainer) sendBulk(n, attempt int, body []byte) (result, []byte) {
	return d.postBatch(d.ep.path+"/_bulk"+query(d.ep.query), ContentTypeNDJSON, n, attempt, body, true)
}
