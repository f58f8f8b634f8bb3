package drain

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/buffer"
	"github.com/sluice-proxy/sluice/policies"
	"github.com/valyala/fasthttp"
)

func TestBackoff(t *testing.T) {
	r := policies.Retry{Initial: 100 * time.Millisecond, Max: time.Second}
	ms := time.Millisecond
	tests := []struct {
		name       string
		retry      policies.Retry
		attempt    int
		retryAfter time.Duration
		rnd        float64
		want       time.Duration
	}{
		{"first, no jitter", r, 1, 0, 0, 50 * ms},
		{"first, most jitter", r, 1, 0, 0.999, 99950 * time.Microsecond},
		{"first, half jitter", r, 1, 0, 0.5, 75 * ms},
		{"second doubles", r, 2, 0, 0, 100 * ms},
		{"third", r, 3, 0, 0, 200 * ms},
		{"fourth", r, 4, 0, 0.5, 600 * ms},
		{"capped at max", r, 5, 0, 0, 500 * ms},
		{"capped at max, jitter", r, 5, 0, 0.5, 750 * ms},
		{"huge attempt does not overflow", r, 1000, 0, 0, 500 * ms},
		{"attempt 63", r, 63, 0, 0, 500 * ms},
		{"attempt 0 is taken as 1", r, 0, 0, 0, 50 * ms},
		{"retry-after below backoff", r, 3, 10 * ms, 0, 200 * ms},
		{"retry-after above backoff", r, 1, time.Second, 0, time.Second},
		{"retry-after above max is honoured", r, 5, time.Hour, 0.9, time.Hour},
		{"rnd out of range is 0", r, 1, 0, 1.5, 50 * ms},
		{"negative rnd is 0", r, 1, 0, -1, 50 * ms},
		{"max below initial", policies.Retry{Initial: time.Second, Max: ms}, 3, 0, 0, 500 * ms},
		{"zero initial is 1ms", policies.Retry{}, 1, 0, 0, 500 * time.Microsecond},
		{"huge max, no overflow", policies.Retry{Initial: time.Hour, Max: 1 << 62}, 40, 0, 0, 1 << 61},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Backoff(tt.retry, tt.attempt, tt.retryAfter, tt.rnd); got != tt.want {
				t.Errorf("Backoff(%+v, %d, %v, %v) = %v, want %v", tt.retry, tt.attempt, tt.retryAfter, tt.rnd, got, tt.want)
			}
		})
	}
}

// TestBackoffBounds checks the jitter range for many attempts and draws.
func TestBackoffBounds(t *testing.T) {
	r := policies.Retry{Initial: 10 * time.Millisecond, Max: 3 * time.Second}
	for attempt := 1; attempt <= 20; attempt++ {
		delay := min(r.Max, r.Initial<<(attempt-1))
		for _, rnd := range []float64{0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999} {
			got := Backoff(r, attempt, 0, rnd)
			if got < delay/2 || got > delay {
				t.Fatalf("attempt %d rnd %v: %v not in [%v, %v]", attempt, rnd, got, delay/2, delay)
			}
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2015, 10, 21, 7, 28, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"1", time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"99999999999999999999999", maxRetryAfter, true},
		{"31536001", maxRetryAfter, true},
		{"Wed, 21 Oct 2015 07:28:30 GMT", 30 * time.Second, true},
		{"Wed, 21 Oct 2015 07:27:00 GMT", 0, true}, // in the past
		{"Wednesday, 21-Oct-15 07:29:00 GMT", time.Minute, true},
		{"Wed Oct 21 07:28:05 2015", 5 * time.Second, true},
		{"Thu, 21 Oct 2100 07:28:00 GMT", maxRetryAfter, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"Wed, 21 Oct 2015", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Wed, 21 Oct 2015 07:28:00 GMT", "Wed Oct 21 07:28:05 2015", "x"} {
		f.Add(s)
	}
	now := time.Date(2015, 10, 21, 7, 28, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := ParseRetryAfter(s, now)
		if d < 0 || d > maxRetryAfter || (!ok && d != 0) {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v", s, d, ok)
		}
	})
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	tests := []struct {
		name string
		err  error
		kind failure
		text string
	}{
		{"fasthttp timeout", fasthttp.ErrTimeout, failTimeout, "timeout after 5s"},
		{"deadline", fmt.Errorf("read: %w", os.ErrDeadlineExceeded), failTimeout, "timeout after 5s"},
		{"net timeout", &net.OpError{Op: "read", Err: timeoutErr{}}, failTimeout, "timeout after 5s"},
		{"refused", refused, failConnect, "connect: connection refused"},
		{"refused via fasthttp", fmt.Errorf("wrapped: %w", refused), failConnect, "connect: connection refused"},
		{"dial timeout", fasthttp.ErrDialTimeout, failConnect, "connect: dial timeout"},
		{"dial i/o timeout", &net.OpError{Op: "dial", Err: timeoutErr{}}, failConnect, "connect: dial timeout"},
		{"unknown host", &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "nope"}}, failConnect, "connect: lookup nope: no such host"},
		{"tls handshake timeout", fasthttp.ErrTLSHandshakeTimeout, failConnect, "connect: tls handshake timeout"},
		{"tls alert", tls.AlertError(40), failConnect, "connect: tls: handshake failure"},
		{"tls record", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, failConnect, "connect: tls: first record does not look like a TLS handshake"},
		{"reset", reset, failConnect, "connect: connection reset"},
		{"closed", fasthttp.ErrConnectionClosed, failConnect, "connect: connection closed before the response"},
		{"eof", io.EOF, failConnect, "connect: connection closed before the response"},
		{"unexpected eof", io.ErrUnexpectedEOF, failConnect, "connect: connection closed before the response"},
		{"garbage", errors.New("error when reading response headers: cannot find whitespace"), failConnect, "connect: error when reading response headers: cannot find whitespace"},
		{"long", errors.New(strings.Repeat("x", 500)), failConnect, "connect: " + strings.Repeat("x", 200) + "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, text := classify(tt.err, 5*time.Second)
			if kind != tt.kind || text != tt.text {
				t.Errorf("classify(%v) = %v, %q; want %v, %q", tt.err, kind, text, tt.kind, tt.text)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	at := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	target := &policies.Target{
		Timeout: 5 * time.Second,
		Retry: policies.Retry{MaxAttempts: 3, Initial: time.Second, Max: time.Minute, On: policies.RetryOn{
			Codes: map[int]bool{408: true, 425: true, 429: true}, Class5xx: true, Timeout: true, Connect: true,
		}},
	}
	noNet := *target
	noNet.Retry.On = policies.RetryOn{Codes: map[int]bool{}, Class5xx: true}
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	tests := []struct {
		name    string
		target  *policies.Target
		attempt int
		res     result
		phase   buffer.Phase
		err     string
		next    time.Duration // from at+dur; Retrying only
	}{
		{"200", target, 1, result{status: 200}, buffer.Delivered, "", 0},
		{"204", target, 3, result{status: 204}, buffer.Delivered, "", 0},
		{"503 retried", target, 1, result{status: 503}, buffer.Retrying, "status 503", 500 * time.Millisecond},
		{"500 second attempt", target, 2, result{status: 500}, buffer.Retrying, "status 500", time.Second},
		{"500 last attempt", target, 3, result{status: 500}, buffer.Dead, "status 500 (gave up after 3 attempts)", 0},
		{"429 with retry-after", target, 1, result{status: 429, retryAfter: 7 * time.Second}, buffer.Retrying, "status 429", 7 * time.Second},
		{"408", target, 1, result{status: 408}, buffer.Retrying, "status 408", 500 * time.Millisecond},
		{"425", target, 1, result{status: 425}, buffer.Retrying, "status 425", 500 * time.Millisecond},
		{"400 dead at once", target, 1, result{status: 400}, buffer.Dead, "status 400", 0},
		{"404 dead at once", target, 1, result{status: 404}, buffer.Dead, "status 404", 0},
		{"301 dead at once", target, 1, result{status: 301}, buffer.Dead, "status 301", 0},
		{"101 dead at once", target, 1, result{status: 101}, buffer.Dead, "status 101", 0},
		{"timeout retried", target, 1, result{err: fasthttp.ErrTimeout, dur: 5 * time.Second}, buffer.Retrying, "timeout after 5s", 500 * time.Millisecond},
		{"refused retried", target, 2, result{err: refused}, buffer.Retrying, "connect: connection refused", time.Second},
		{"refused, last", target, 3, result{err: refused}, buffer.Dead, "connect: connection refused (gave up after 3 attempts)", 0},
		{"timeout not retried", &noNet, 1, result{err: fasthttp.ErrTimeout}, buffer.Dead, "timeout after 5s", 0},
		{"refused not retried", &noNet, 1, result{err: refused}, buffer.Dead, "connect: connection refused", 0},
		{"429 not retried", &noNet, 1, result{status: 429}, buffer.Dead, "status 429", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.res.at = at
			out := decide(tt.target, tt.attempt, tt.res, 0)
			if out.Phase != tt.phase || out.Attempt.Error != tt.err {
				t.Fatalf("phase %q error %q; want %q %q", out.Phase, out.Attempt.Error, tt.phase, tt.err)
			}
			if out.Attempt.At != at || out.Attempt.Status != tt.res.status || out.Attempt.Duration != tt.res.dur {
				t.Errorf("attempt %+v does not match the result %+v", out.Attempt, tt.res)
			}
			var want time.Time
			if tt.phase == buffer.Retrying {
				want = at.Add(tt.res.dur).Add(tt.next)
			}
			if !out.NextTry.Equal(want) {
				t.Errorf("NextTry %v, want %v", out.NextTry, want)
			}
		})
	}
}
