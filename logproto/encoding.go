package logproto

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrTooLarge is returned by Decode when the decoded body passes the limit.
var ErrTooLarge = errors.New("the decoded body exceeds the route's max_body")

// Decode undoes a request's Content-Encoding: "" or identity (body as it
// is), gzip (also x-gzip), or deflate (zlib-wrapped, as HTTP says, or raw
// deflate, as some clients send). The decoded body may hold at most limit
// bytes: beyond that, ErrTooLarge, having read no more than limit+1 decoded
// bytes (a small zip bomb costs little). An unknown encoding or a corrupt
// stream is a 400 *Error (415 for an unknown encoding).
func Decode(body []byte, encoding string, limit int64) ([]byte, error) {
	enc := strings.ToLower(strings.TrimSpace(encoding))
	var r io.Reader
	switch enc {
	case "", "identity":
		if int64(len(body)) > limit {
			return nil, ErrTooLarge
		}
		return body, nil
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, badRequest("parse_exception", "the gzip body is corrupt: %v", err)
		}
		r = zr
	case "deflate":
		if zr, err := zlib.NewReader(bytes.NewReader(body)); err == nil {
			r = zr
		} else {
			r = flate.NewReader(bytes.NewReader(body))
		}
	default:
		return nil, &Error{Status: 415, Type: "content_encoding_not_supported",
			Reason: fmt.Sprintf("Content-Encoding %.40q is not supported: gzip, deflate or none", encoding)}
	}
	var out bytes.Buffer
	out.Grow(int(min(limit, int64(len(body))*4) + 1))
	n, err := io.Copy(&out, io.LimitReader(r, limit+1))
	if n > limit {
		return nil, ErrTooLarge
	}
	if err != nil {
		return nil, badRequest("parse_exception", "the %s body is corrupt: %v", enc, err)
	}
	return out.Bytes(), nil
}
