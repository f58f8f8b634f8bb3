package drain

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/policies"
	"github.com/sluice-proxy/sluice/store"
	"github.com/valyala/fasthttp"
)

// Backoff returns how long to wait before the next try after attempt number
// attempt (1 for the first) failed.
//
// The delay is min(retry.Max, retry.Initial * 2^(attempt-1)), then jittered
// into [delay/2, delay) by rnd, a random number in [0, 1): half the delay is
// kept so retries never bunch up at zero, the other half spreads them. If the
// target asked for a pause with Retry-After (retryAfter > 0), the result is
// at least retryAfter, even when that exceeds retry.Max: the downstream said
// when it can take the request again, and coming back earlier only earns
// another refusal. (The store's retention still bounds how long a message
// waits.)
//
// A zero or negative Initial is taken as 1ms; a Max below Initial as Initial.
func Backoff(retry policies.Retry, attempt int, retryAfter time.Duration, rnd float64) time.Duration {
	initial := retry.Initial
	if initial <= 0 {
		initial = time.Millisecond
	}
	ceiling := max(retry.Max, initial)
	attempt = max(attempt, 1)
	delay := ceiling
	// initial * 2^(attempt-1) < ceiling, without overflow.
	if attempt-1 < 62 && initial <= ceiling>>(attempt-1) {
		delay = min(initial<<(attempt-1), ceiling)
	}
	if rnd < 0 || rnd >= 1 || math.IsNaN(rnd) {
		rnd = 0
	}
	half := delay / 2
	d := half + time.Duration(rnd*float64(delay-half))
	return max(d, retryAfter)
}

// maxRetryAfter bounds a delta-seconds Retry-After, so the sum with a time
// cannot overflow. Nobody means a pause of more than a year.
const maxRetryAfter = 365 * 24 * time.Hour

// ParseRetryAfter parses a Retry-After header value (RFC 9110, 10.2.3):
// delta-seconds ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT",
// also the obsolete RFC 850 and asctime forms). It returns the pause it asks
// for, counted from now; a date in the past gives 0. ok is false for an empty
// or malformed value. Pauses longer than a year are cut to a year.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if allDigits(v) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true // too many digits for uint64 is still "a long time"
		}
		return time.Duration(n) * time.Second, true
	}
	for _, layout := range []string{time.RFC1123, "Monday, 02-Jan-06 15:04:05 MST", time.ANSIC} {
		t, err := time.Parse(layout, v)
		if err != nil {
			continue
		}
		if layout == time.ANSIC {
			t = t.UTC()
		}
		d := t.Sub(now)
		return min(max(d, 0), maxRetryAfter), true
	}
	return 0, false
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// failure is how an attempt that got no HTTP answer failed.
type failure int

const (
	failNone    failure = iota
	failTimeout         // the attempt took longer than Target.Timeout
	failConnect         // no usable connection or response: refused, reset, EOF, TLS, garbage
)

// classify says what kind of failure err is and describes it in a few words
// for Attempt.Error. timeout is the per-attempt deadline, for the message.
func classify(err error, timeout time.Duration) (failure, string) {
	var dialErr *fasthttp.ErrDialWithUpstream
	var opErr *net.OpError
	isDial := errors.As(err, &dialErr) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		(errors.As(err, &opErr) && opErr.Op == "dial")
	switch {
	case isDial && errors.Is(err, syscall.ECONNREFUSED):
		return failConnect, "connect: connection refused"
	case isDial && (errors.Is(err, fasthttp.ErrDialTimeout) || isTimeout(err)):
		return failConnect, "connect: dial timeout"
	case isDial:
		return failConnect, "connect: " + shortError(err)
	case errors.Is(err, fasthttp.ErrTLSHandshakeTimeout):
		return failConnect, "connect: tls handshake timeout"
	case isTLS(err):
		return failConnect, "connect: tls: " + shortError(err)
	case isTimeout(err):
		return failTimeout, "timeout after " + timeout.String()
	case errors.Is(err, syscall.ECONNRESET):
		return failConnect, "connect: connection reset"
	case errors.Is(err, syscall.EPIPE):
		return failConnect, "connect: broken pipe"
	case errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return failConnect, "connect: connection closed before the response"
	}
	return failConnect, "connect: " + shortError(err)
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

func isTLS(err error) bool {
	var (
		rh   tls.RecordHeaderError
		al   tls.AlertError
		cv   *tls.CertificateVerificationError
		ua   x509.UnknownAuthorityError
		ci   x509.CertificateInvalidError
		hn   x509.HostnameError
		echo *tls.ECHRejectionError
	)
	return errors.As(err, &rh) || errors.As(err, &al) || errors.As(err, &cv) || errors.As(err, &ua) ||
		errors.As(err, &ci) || errors.As(err, &hn) || errors.As(err, &echo) ||
		strings.HasPrefix(innermost(err).Error(), "tls: ")
}

// innermost follows a chain of single wrappers to its end.
func innermost(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// shortError is the innermost error's text (without the addresses that
// net.OpError and fasthttp prepend), cut to 200 bytes.
func shortError(err error) string {
	s := innermost(err).Error()
	s = strings.TrimPrefix(s, "tls: ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// result is what one HTTP attempt came to.
type result struct {
	at         time.Time       // when it started (Config.Now)
	dur        time.Duration   // how long it took
	status     int             // 0 if no response
	err        error           // transport failure; nil if a response arrived
	retryAfter time.Duration   // from a 429 or 503 with Retry-After; else 0
	tooLarge   bool            // the body exceeded what the client reads (16 MiB) and was not read
	resp       *store.Response // the captured answer (capture_response, 2xx only); else nil
}

// decide turns an attempt's result into the outcome to record. rnd is a
// random number in [0, 1) for the backoff's jitter.
func decide(t *policies.Target, attempt int, res result, rnd float64) store.Outcome {
	out, retryable := judge(t, res)
	if out.Phase == store.Delivered {
		return out
	}
	return finish(t, out, retryable, attempt, res.at.Add(res.dur).Add(Backoff(t.Retry, attempt, res.retryAfter, rnd)))
}

// judge classifies a result: Delivered (2xx), or a failure that is retryable
// or not, with the Attempt filled in. Phase is left empty for failures.
func judge(t *policies.Target, res result) (out store.Outcome, retryable bool) {
	out = store.Outcome{Attempt: store.Attempt{At: res.at, Status: res.status, Duration: res.dur}}
	switch {
	case res.err != nil:
		kind, text := classify(res.err, t.Timeout)
		out.Attempt.Error = text
		retryable = kind == failTimeout && t.Retry.On.Timeout || kind == failConnect && t.Retry.On.Connect
	case res.status >= 200 && res.status <= 299:
		out.Phase = store.Delivered
		out.Response = res.resp
	default:
		out.Attempt.Error = "status " + strconv.Itoa(res.status)
		retryable = t.Retry.On.Status(res.status)
	}
	return out, retryable
}

// finish makes a judged failure of attempt number attempt Retrying at
// nextTry, or Dead if it is not retryable or was the last attempt allowed.
func finish(t *policies.Target, out store.Outcome, retryable bool, attempt int, nextTry time.Time) store.Outcome {
	if !retryable || attempt >= t.Retry.MaxAttempts {
		out.Phase = store.Dead
		if retryable {
			out.Attempt.Error += fmt.Sprintf(" (gave up after %d attempts)", attempt)
		}
		return out
	}
	out.Phase = store.Retrying
	out.NextTry = nextTry
	return out
}
