package logproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Splunk HTTP Event Collector (HEC) status codes, as Splunk answers them.
const (
	HECSuccess       = 0
	HECTokenRequired = 2
	HECInvalidAuth   = 3
	HECInvalidToken  = 4
	HECNoData        = 5
	HECInvalidFormat = 6
	HECServerBusy    = 9
	HECEventRequired = 12
	HECEventBlank    = 13
	HECHealthy       = 17

	HECChannelMissing = 10
	HECInvalidChannel = 11
)

// HECEndpoint tells which HEC call a path is: "event" for
// /services/collector, /services/collector/event (and their /1.0 forms),
// "raw" for /services/collector/raw, "health" for
// /services/collector/health; "" for any other path.
func HECEndpoint(path string) string {
	p := strings.TrimSuffix(strings.TrimSuffix(path, "/"), "/1.0")
	switch p {
	case "/services/collector", "/services/collector/event":
		return "event"
	case "/services/collector/raw":
		return "raw"
	case "/services/collector/health":
		return "health"
	case "/services/collector/ack":
		return "ack"
	}
	return ""
}

// HECSuccessAck returns HEC's success reply with the ackId of indexer
// acknowledgement: {"text":"Success","code":0,"ackId":N}.
func HECSuccessAck(ackID uint64) []byte {
	b := append([]byte(`{"text":"Success","code":0,"ackId":`), strconv.AppendUint(nil, ackID, 10)...)
	return append(b, "}\n"...)
}

// ParseHECAcks parses the body of an ack query, {"acks":[0,1,...]}; at most
// max ids.
func ParseHECAcks(body []byte, max int) ([]uint64, error) {
	var q struct {
		Acks *[]uint64 `json:"acks"`
	}
	if err := json.Unmarshal(body, &q); err != nil || q.Acks == nil {
		return nil, hecError(HECInvalidFormat, -1, "Invalid data format")
	}
	if len(*q.Acks) > max {
		return nil, hecError(HECInvalidFormat, -1, fmt.Sprintf("at most %d acks per query", max))
	}
	return *q.Acks, nil
}

// AppendHECAckReply appends {"acks":{"<id>":bool,...}} to dst, done[i]
// for ids[i].
func AppendHECAckReply(dst []byte, ids []uint64, done []bool) []byte {
	dst = append(dst, `{"acks":{`...)
	for i, id := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = strconv.AppendUint(dst, id, 10)
		dst = append(dst, `":`...)
		dst = strconv.AppendBool(dst, done[i])
	}
	return append(dst, "}}\n"...)
}

// HECReply returns the JSON body of a HEC reply: {"text":...,"code":N}, and
// "invalid-event-number" when event >= 0.
func HECReply(text string, code, event int) []byte {
	b := append([]byte(`{"text":`), appendJSONString(nil, text)...)
	b = append(b, `,"code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	if event >= 0 {
		b = append(b, `,"invalid-event-number":`...)
		b = strconv.AppendInt(b, int64(event), 10)
	}
	return append(b, "}\n"...)
}

// HECError is a request refused in HEC's way: Status 400, HEC's text and
// code, and the number of the first bad event.
type HECError struct {
	Status int
	Text   string
	Code   int
	Event  int // 0-based; -1 if none
}

func (e *HECError) Error() string { return fmt.Sprintf("%d %s (code %d)", e.Status, e.Text, e.Code) }

func hecError(code, event int, text string) *HECError {
	return &HECError{Status: 400, Text: text, Code: code, Event: event}
}

// Body returns the HEC reply body for e.
func (e *HECError) Body() []byte { return HECReply(e.Text, e.Code, e.Event) }

// ParseHEC parses the body of a HEC event call: one or more JSON objects,
// one after another (with or without white space between them), each with
// an "event". Each becomes one document: the object compacted to one line,
// with time, host, source, sourcetype, index and fields kept as sent. A
// body that is not such objects, or an event without "event", refuses the
// whole request with a *HECError naming the event's number.
func ParseHEC(body []byte) ([]Doc, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var docs []Doc
	for i := 0; ; i++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || len(raw) == 0 || raw[0] != '{' {
			return nil, hecError(HECInvalidFormat, i, "Invalid data format")
		}
		var env struct {
			Event json.RawMessage `json:"event"`
		}
		if json.Unmarshal(raw, &env) != nil {
			return nil, hecError(HECInvalidFormat, i, "Invalid data format")
		}
		switch {
		case len(env.Event) == 0 || string(env.Event) == "null":
			return nil, hecError(HECEventRequired, i, "Event field is required")
		case string(env.Event) == `""`:
			return nil, hecError(HECEventBlank, i, "Event field cannot be blank")
		}
		docs = append(docs, Doc{Body: compact(raw)})
	}
	if len(docs) == 0 {
		return nil, hecError(HECNoData, -1, "No data")
	}
	return docs, nil
}

// ParseHECRaw parses the body of a HEC raw call: each line that is not
// blank is one event, stored as {"event":"<line>"} with the metadata given
// in the query (host, source, sourcetype, index), if any.
func ParseHECRaw(body []byte, meta map[string]string) ([]Doc, error) {
	var prefix []byte
	for _, k := range []string{"host", "index", "source", "sourcetype"} {
		if v, ok := meta[k]; ok && v != "" {
			prefix = append(prefix, '"')
			prefix = append(prefix, k...)
			prefix = append(prefix, `":`...)
			prefix = appendJSONString(prefix, v)
			prefix = append(prefix, ',')
		}
	}
	var docs []Doc
	// Each event repeats the query's metadata: bound the total (see
	// MaxExpansion), or a body of many short lines under a long query would
	// take far more memory split than whole.
	var total int64
	err := lines(body, func(_ int, line []byte) error {
		if total += int64(len(prefix) + 2*len(line) + 12); total > MaxExpansion*int64(len(body))+1<<20 {
			return ErrTooLarge
		}
		b := append([]byte{'{'}, prefix...)
		b = append(b, `"event":`...)
		b = appendJSONString(b, strings.ToValidUTF8(string(line), "\uFFFD"))
		docs = append(docs, Doc{Body: append(b, '}')})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, hecError(HECNoData, -1, "No data")
	}
	return docs, nil
}

// compact returns raw (valid JSON) without insignificant white space, so
// that it is one line.
func compact(raw []byte) []byte {
	if bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0 {
		return raw
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		panic(fmt.Sprintf("logproto: compact of valid JSON failed: %v", err))
	}
	return b.Bytes()
}
