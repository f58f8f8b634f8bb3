package drain

import (
	"errors"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/store"
)

// A target with protocol otlp gets its batches as OTLP/HTTP log exports to
// the URL's path + /v1/logs. Each stored record (from an otlp route) is an
// export of one record with its resource and scope; a batch joins them into
// one export per encoding (protobuf records concatenated, JSON records'
// resourceLogs joined), so a batch of both encodings is two requests, each
// judged on its own. A message that is not an OTLP export (from another
// protocol) is dead at once. A 2xx whose partial_success rejects records is
// logged with the server's count and message: OTLP says such records must
// not be sent again, and the reply does not say which they are.

var errNotOTLP = errors.New("otlp: the body is not an OTLP logs export, so it cannot be sent to an OTLP target")

// attemptOTLP is attemptBatch for otlp targets.
func (d *Drainer) attemptOTLP(batch []*store.Delivery, probe bool, events chan<- event) {
	groups := map[string][]*store.Delivery{}
	var refused []*store.Delivery
	for _, dl := range batch {
		enc := logproto.OTLPProtobuf
		if logproto.IsOTLPJSON(dl.Body) {
			enc = logproto.OTLPJSON
		}
		if docs, err := logproto.ParseOTLPLogs(dl.Body, enc); err != nil || len(docs) == 0 {
			refused = append(refused, dl)
			continue
		}
		groups[enc] = append(groups[enc], dl)
	}
	d.rndMu.Lock()
	rnd := d.rnd()
	d.rndMu.Unlock()
	var all []*store.Delivery
	var outs []store.Outcome
	var signal result
	sent := 0
	for _, enc := range []string{logproto.OTLPProtobuf, logproto.OTLPJSON} {
		group := groups[enc]
		if len(group) == 0 {
			continue
		}
		docs := make([][]byte, len(group))
		maxAttempt := 0
		for i, dl := range group {
			docs[i] = dl.Body
			maxAttempt = max(maxAttempt, dl.Attempt)
		}
		body, _ := logproto.AppendOTLPLogs(nil, enc, docs) // each was parsed above
		res, reply := d.sendOTLP(enc, len(group), maxAttempt, body)
		if sent == 0 || failed(&res) || res.status == fasthttp.StatusTooManyRequests {
			signal = res // the run loop hears of the worse attempt
		}
		sent += len(group)
		judged, retryable := judge(&d.target, res)
		if judged.Phase == store.Delivered {
			if n, msg := logproto.ParseOTLPPartial(reply, enc); n > 0 {
				d.log.Warn("the OTLP target rejected log records for good (partial success); OTLP says not to send them again",
					"rejected", n, "batch", len(group), "reason", msg)
			}
		}
		nextTry := res.at.Add(res.dur).Add(Backoff(d.target.Retry, maxAttempt, res.retryAfter, rnd))
		for _, dl := range group {
			out := judged
			if out.Phase != store.Delivered {
				out = finish(&d.target, judged, retryable, dl.Attempt, nextTry)
			}
			all, outs = append(all, dl), append(outs, out)
		}
	}
	events <- event{res: signal, probe: probe, none: sent == 0}
	now := d.now()
	for _, dl := range refused {
		all = append(all, dl)
		outs = append(outs, store.Outcome{Phase: store.Dead, Attempt: store.Attempt{At: now, Error: errNotOTLP.Error()}})
	}
	d.recordOutcomes(all, outs, signal.status, sent, events)
}

// sendOTLP makes one export of n records and returns the result and a copy
// of the reply's body.
func (d *Drainer) sendOTLP(enc string, n, attempt int, body []byte) (result, []byte) {
	return d.postBatch(withSuffix(d.ep.path, logproto.OTLPLogsPath)+query(d.ep.query), enc, n, attempt, body, true)
}
