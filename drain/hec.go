package drain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/sluice-proxy/sluice/logproto"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
)

// A target with protocol splunk-hec gets its batches as HEC event calls to
// the URL's path + /services/collector/event (credentials go in the
// target's headers: Authorization: Splunk <token>). A document stored by a
// splunk-hec route (logproto.HeaderProtocol) is sent as it came (its time, host, source, sourcetype,
// index and fields kept); any other becomes {"time":<received>,"event":<the
// document>}. A 400 naming an invalid-event-number makes that event dead,
// with Splunk's text, and sends the others again (Splunk may have indexed
// the ones before it: at least once, never lost); any other failure is
// judged for the batch as a whole.

// hecEvent returns the HEC event object for a stored message.
func hecEvent(dl *store.Delivery) []byte {
	body := bytes.TrimSpace(dl.Body)
	if storedBy(dl, policies.ProtocolSplunkHEC) {
		if line, err := ndjsonLine(body); err == nil {
			return line // an event envelope, as it came
		}
	}
	var ev json.RawMessage
	if json.Valid(body) {
		ev, _ = ndjsonLine(body)
	} else {
		ev, _ = json.Marshal(strings.ToValidUTF8(string(dl.Body), "\uFFFD"))
	}
	t := float64(dl.EnqueuedAt.UnixNano()) / 1e9
	b, _ := json.Marshal(struct {
		Time  json.Number     `json:"time"`
		Event json.RawMessage `json:"event"`
	}{json.Number(strconv.FormatFloat(t, 'f', 3, 64)), ev})
	return b
}

// attemptHEC is attemptBatch for splunk-hec targets.
func (d *Drainer) attemptHEC(batch []*store.Delivery, probe bool, events chan<- event) {
	var body bytes.Buffer
	maxAttempt := 0
	for _, dl := range batch {
		body.Write(hecEvent(dl))
		body.WriteByte('\n')
		maxAttempt = max(maxAttempt, dl.Attempt)
	}
	res, reply := d.sendHEC(len(batch), maxAttempt, body.Bytes())
	events <- event{res: res, probe: probe}

	d.rndMu.Lock()
	rnd := d.rnd()
	d.rndMu.Unlock()
	judged, retryable := judge(&d.target, res)
	nextTry := res.at.Add(res.dur).Add(Backoff(d.target.Retry, maxAttempt, res.retryAfter, rnd))
	bad := -1
	var hr struct {
		Text  string `json:"text"`
		Code  int    `json:"code"`
		Event *int   `json:"invalid-event-number"`
	}
	if res.status == fasthttp.StatusBadRequest && json.Unmarshal(reply, &hr) == nil && hr.Event != nil && *hr.Event >= 0 && *hr.Event < len(batch) {
		bad = *hr.Event
	}
	outs := make([]store.Outcome, len(batch))
	for i, dl := range batch {
		switch {
		case judged.Phase == store.Delivered:
			outs[i] = judged
		case bad >= 0 && i == bad:
			out := judged
			out.Attempt.Error = fmt.Sprintf("splunk-hec: event refused: %.200s (code %d)", hr.Text, hr.Code)
			out.Phase = store.Dead
			outs[i] = out
		case bad >= 0:
			// Not this event's fault: sent again (with its own backoff).
			out := judged
			out.Attempt.Error = fmt.Sprintf("splunk-hec: event %d of the batch was refused; sent again without it", bad)
			outs[i] = finish(&d.target, out, true, dl.Attempt, nextTry)
		default:
			outs[i] = finish(&d.target, judged, retryable, dl.Attempt, nextTry)
		}
	}
	d.recordOutcomes(batch, outs, res.status, len(batch), events)
}

// sendHEC makes one HEC event call of n events and returns the result and
// a copy of the reply's body.
func (d *Drainer) sendHEC(n, attempt int, body []byte) (result, []byte) {
	uri := d.ep.path
	if logproto.HECEndpoint(uri) != "event" {
		uri += "/services/collector/event"
	}
	return d.postBatch(uri+query(d.ep.query), "application/json", n, attempt, body, true)
}
