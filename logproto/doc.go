// Package logproto holds the codecs of the log protocols sluice speaks: it
// parses an ingest request into documents, builds each protocol's success
// and error replies, builds delivery batches, and reads a store's bulk reply
// item by item. It knows no HTTP server, no store and no other sluice
// package: the proxy (ingest) and the drainers (delivery) call it with bytes
// and get bytes back.
//
// Protocols:
//   - elasticsearch: the _bulk API (action line + document line pairs), the
//     version probe on / and the health, template, ILM and license calls
//     that Elasticsearch outputs make at start (Probe).
//   - splunk-hec: Splunk HEC event and raw bodies, HEC replies.
//   - loki: Loki push requests (JSON, snappy protobuf), and pushes for delivery.
//   - otlp: OTLP/HTTP log exports split per record and joined again.
//   - ndjson: one JSON document per line.
//
// Guarantees:
//   - A parser accepts a request whole or refuses it whole: a malformed
//     document anywhere makes the whole request an *Error (the protocol's
//     status, type and reason, naming the line, echoing no request bytes),
//     so that nothing of a refused request is stored.
//   - Every document returned is one line of JSON without a line break, so
//     it can be sent on in any line-oriented batch as it is.
//   - Decode refuses a compressed body whose decoded size passes the limit
//     (ErrTooLarge) before holding more than limit+1 bytes of it.
//   - ParseBulkReply reports every item of a store's reply, or an error:
//     a reply that cannot be read, or has the wrong number of items, is never
//     taken for a success.
//
// Costs: parsing decodes each action line (a few hundred nanoseconds) and
// validates each document once (fastjson's validator, about 1 GB/s); a document's bytes are
// not copied (they alias the request body). A bulk reply with errors:false
// is not read item by item.
package logproto
