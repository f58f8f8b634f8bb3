package policies

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // timezone names work on hosts and images without a zoneinfo database

	"github.com/dustin/go-humanize"
)

// Parsers for single values. Each returns an error that says what it got and what is
// expected; the decoder adds file, line and field.

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

func parseName(s string) (string, error) {
	if !namePattern.MatchString(s) {
		return "", fmt.Errorf("invalid name %q: expected 1-63 lower-case letters, digits, _ or -, starting with a letter or digit", s)
	}
	return s, nil
}

func parseListen(s string) (string, error) {
	_, port, err := net.SplitHostPort(s)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("invalid listen address %q: expected host:port or :port, such as \":8080\"", s)
	}
	return s, nil
}

func parseEngine(s string) (string, error) {
	switch s {
	case EngineBbolt, EngineJetStream:
		return s, nil
	}
	return "", fmt.Errorf("unknown engine %q: expected bbolt or jetstream", s)
}

func parseDir(s string) (string, error) {
	if strings.ContainsRune(s, 0) {
		return "", fmt.Errorf("invalid directory %q: contains a NUL byte", s)
	}
	return s, nil
}

func parseFsync(s string) (Fsync, error) {
	switch s {
	case "always":
		return Fsync{Mode: FsyncAlways}, nil
	case "never":
		return Fsync{Mode: FsyncNever}, nil
	}
	if rest, ok := strings.CutPrefix(s, "interval:"); ok {
		d, err := positiveDuration(strings.TrimSpace(rest))
		if err != nil {
			return Fsync{}, fmt.Errorf("invalid fsync %q: %w", s, err)
		}
		return Fsync{Mode: FsyncInterval, Interval: d}, nil
	}
	return Fsync{}, fmt.Errorf("invalid fsync %q: expected always, interval:DURATION (such as interval:10ms) or never", s)
}

func parseMode(s string) (string, error) {
	switch s {
	case ModeBuffer, ModePassthrough, ModeSpillover:
		return s, nil
	}
	return "", fmt.Errorf("unknown mode %q: expected buffer, passthrough or spillover", s)
}

func parseBool(s string) (bool, error) {
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("invalid value %q: expected true or false", s)
}

var hostLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// parseHost accepts a host name without port, or "*." and a host name for its
// subdomains, and returns it in lower case.
func parseHost(s string) (string, error) {
	h := strings.ToLower(s)
	name, wild := strings.CutPrefix(h, "*.")
	bad := fmt.Errorf("invalid host %q: expected a host name without port, such as shop.example.com, or *.example.com for its subdomains", s)
	if len(name) == 0 || len(name) > 253 {
		return "", bad
	}
	if ip := net.ParseIP(strings.Trim(name, "[]")); ip != nil && !wild {
		return strings.Trim(name, "[]"), nil
	}
	for _, l := range strings.Split(name, ".") {
		if !hostLabel.MatchString(l) {
			return "", bad
		}
	}
	return h, nil
}

// parseDuration accepts Go durations ("500ms", "1h30m") and days ("3d", "1d12h").
func parseDuration(s string) (time.Duration, error) {
	bad := fmt.Errorf("invalid duration %q: expected a number with a unit, such as 500ms, 10s, 5m, 72h or 3d", s)
	days, rest, hasDays := strings.Cut(s, "d")
	if !hasDays {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, bad
		}
		return d, nil
	}
	if !isDecimal(days) {
		return 0, bad
	}
	n, err := strconv.ParseFloat(days, 64)
	if err != nil || n*24 >= math.MaxInt64/float64(time.Hour) {
		return 0, bad
	}
	d := time.Duration(n * 24 * float64(time.Hour))
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 || d > math.MaxInt64-r {
			return 0, bad
		}
		d += r
	}
	return d, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err == nil && d <= 0 {
		err = fmt.Errorf("invalid duration %q: must be more than 0", s)
	}
	return d, err
}

// parseRetention parses storage.retention: at least MinRetention.
func parseRetention(s string) (time.Duration, error) {
	d, err := positiveDuration(s)
	if err == nil && d < MinRetention {
		err = fmt.Errorf("retention %s is below the floor of %s: acknowledged messages would expire before they could be delivered; use hours or days, such as 72h or 3d",
			s, strings.TrimSuffix(MinRetention.String(), "0s"))
	}
	return d, err
}

// maxSize is the largest size accepted anywhere, 1 EiB, so sizes fit in an int64.
const maxSize = 1 << 60

// parseSize returns a parser of sizes such as 1048576, 512KiB, 64MiB or 50GiB within [lo, hi].
func parseSize(lo, hi int64) func(string) (int64, error) {
	return func(s string) (int64, error) {
		n, err := humanize.ParseBytes(s)
		if err != nil || n > maxSize {
			return 0, fmt.Errorf("invalid size %q: expected bytes with an optional unit, such as 512KiB, 64MiB or 50GiB", s)
		}
		if int64(n) < lo || int64(n) > hi {
			return 0, fmt.Errorf("size %s out of range: expected %s to %s", s, sizeString(lo), sizeString(hi))
		}
		return int64(n), nil
	}
}

// parseBodyLimit parses a passthrough route's max_body: a size of at least 1
// byte, or "unlimited" (NoBodyLimit).
func parseBodyLimit(s string) (int64, error) {
	if s == "unlimited" {
		return NoBodyLimit, nil
	}
	n, err := parseSize(1, maxSize)(s)
	if err != nil {
		return 0, fmt.Errorf("%w, or unlimited", err)
	}
	return n, nil
}

// sizeString writes n with the largest binary unit that divides it: 64KiB, 4GiB.
func sizeString(n int64) string {
	units := []string{"", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for n != 0 && n%1024 == 0 && i < len(units)-1 {
		n /= 1024
		i++
	}
	return strconv.FormatInt(n, 10) + units[i]
}

// parseInt returns a parser of whole numbers within [lo, hi].
func parseInt(lo, hi int) func(string) (int, error) {
	return func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			return 0, fmt.Errorf("invalid number %q: expected a whole number from %d to %d", s, lo, hi)
		}
		return n, nil
	}
}

// parseToken returns a parser of HTTP tokens (RFC 9110 section 5.6.2), such as methods and
// header names; what names the thing in messages.
func parseToken(what string) func(string) (string, error) {
	return func(s string) (string, error) {
		if s == "" {
			return "", fmt.Errorf("empty %s", what)
		}
		for _, c := range []byte(s) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
				return "", fmt.Errorf("invalid %s %q: expected letters, digits and !#$%%&'*+-.^_`|~ only", what, s)
			}
		}
		return s, nil
	}
}

func parsePath(s string) (string, error) {
	if !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("invalid path %q: must start with /", s)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '?' || r == '#' }); i >= 0 {
		return "", fmt.Errorf("invalid path %q: no spaces, control characters, ? or # allowed", s)
	}
	// Requests are matched on their path normalised (RFC 3986 section
	// 6.2.2; see proxy/path.go): a path in another form would never match.
	for _, seg := range strings.Split(s[1:], "/") {
		if seg == "." || seg == ".." {
			return "", fmt.Errorf("invalid path %q: no . or .. segments (requests are matched with them resolved)", s)
		}
	}
	const upperHex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+2 >= len(s) || strings.IndexByte(upperHex, s[i+1]) < 0 || strings.IndexByte(upperHex, s[i+2]) < 0 {
			return "", fmt.Errorf("invalid path %q: %% must be followed by two upper-case hex digits, such as %%2F", s)
		}
		c := byte(strings.IndexByte(upperHex, s[i+1])<<4 | strings.IndexByte(upperHex, s[i+2]))
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			return "", fmt.Errorf("invalid path %q: write %s as %c (requests are matched with unreserved characters decoded)", s, s[i:i+3], c)
		}
		i += 2
	}
	return s, nil
}

// parseURL accepts absolute http and https URLs with a host and no user info or fragment.
func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return nil, fmt.Errorf("invalid URL %q: %v; expected such as http://127.0.0.1:8081", s, err)
	}
	shown := u.Redacted()
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("invalid URL %q: expected an http:// or https:// URL", shown)
	case u.User != nil:
		return nil, fmt.Errorf("invalid URL %q: user info is not allowed", shown)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("invalid URL %q: no host, expected such as http://127.0.0.1:8081", shown)
	case strings.Contains(s, "#"):
		return nil, fmt.Errorf("invalid URL %q: a fragment (#...) is not allowed", shown)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("invalid URL %q: port must be 1 to 65535", shown)
		}
	}
	return u, nil
}

// parseCallbackPrefix accepts an http or https URL with a path, such as
// https://hooks.example.com/ or http://127.0.0.1:9000/sluice/: the path closes
// the host, so the prefix cannot match another host that merely starts alike.
func parseCallbackPrefix(s string) (string, error) {
	u, err := parseURL(s)
	if err != nil {
		return "", err
	}
	switch {
	case u.Path == "" || !strings.HasPrefix(s[len(u.Scheme)+3+len(u.Host):], "/"):
		return "", fmt.Errorf("callback prefix %q must have a path after the host, such as %s/ (else %s.evil.example would match)", s, strings.TrimSuffix(s, "/"), u.Host)
	case u.RawQuery != "" || strings.Contains(s, "?"):
		return "", fmt.Errorf("callback prefix %q: a query is not allowed", s)
	case len(s) > MaxCallbackURL:
		return "", fmt.Errorf("callback prefix of %d bytes: at most %d", len(s), MaxCallbackURL)
	}
	return s, nil
}

func parseLocation(s string) (*time.Location, error) {
	loc, err := time.LoadLocation(s)
	if err != nil {
		return nil, fmt.Errorf("unknown timezone %q: expected an IANA name such as UTC or Asia/Shanghai", s)
	}
	return loc, nil
}

// parseBetween parses "HH:MM-HH:MM" into minutes after midnight. The end may be 24:00.
func parseBetween(s string) ([2]int, error) {
	bad := fmt.Errorf("invalid between %q: expected HH:MM-HH:MM, such as 22:00-06:00", s)
	a, b, ok := strings.Cut(s, "-")
	from, err1 := parseClock(strings.TrimSpace(a))
	to, err2 := parseClock(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || from == 24*60 {
		return [2]int{}, bad
	}
	to %= 24 * 60
	if from == to {
		return [2]int{}, fmt.Errorf("invalid between %q: start and end are the same time (leave out between for all day)", s)
	}
	return [2]int{from, to}, nil
}

var clockPattern = regexp.MustCompile(`^([0-9]{1,2}):([0-9]{2})$`)

// parseClock parses H:MM or HH:MM, 00:00 to 24:00, into minutes after midnight.
func parseClock(s string) (int, error) {
	m := clockPattern.FindStringSubmatch(s)
	if m == nil {
		return 0, errors.New("bad clock")
	}
	h, _ := strconv.Atoi(m[1])
	mm, _ := strconv.Atoi(m[2])
	if h > 24 || mm > 59 || h == 24 && mm != 0 {
		return 0, errors.New("bad clock")
	}
	return h*60 + mm, nil
}

var dayNames = map[string]time.Weekday{}

func init() {
	for d := time.Sunday; d <= time.Saturday; d++ {
		name := strings.ToLower(d.String())
		dayNames[name] = d
		dayNames[name[:3]] = d
	}
}

func parseDay(s string) (time.Weekday, error) {
	if d, ok := dayNames[strings.ToLower(s)]; ok {
		return d, nil
	}
	return 0, fmt.Errorf("invalid day %q: expected mon, tue, wed, thu, fri, sat or sun", s)
}

// add adds one item of retry.on: 5xx, 4xx, a status code, timeout or connect.
func (r *RetryOn) add(s string) error {
	switch strings.ToLower(s) {
	case "5xx":
		r.Class5xx = true
	case "4xx":
		r.Class4xx = true
	case "timeout":
		r.Timeout = true
	case "connect":
		r.Connect = true
	default:
		code, err := strconv.Atoi(s)
		if err != nil || code < 100 || code > 599 || len(s) != 3 {
			return fmt.Errorf("invalid retry condition %q: expected 5xx, 4xx, a status code 100-599, timeout or connect", s)
		}
		r.Codes[code] = true
	}
	return nil
}

// parseFiniteRate is ParseRate for rates that must be more than 0 and not unlimited.
func parseFiniteRate(s string) (Rate, error) {
	r, err := ParseRate(s)
	if err != nil {
		return Rate{}, err
	}
	if r.Unlimited || r.PerSecond <= 0 {
		return Rate{}, fmt.Errorf("invalid rate %q: expected a rate above 0 such as 10/s (not 0, not unlimited)", s)
	}
	return r, nil
}

// parseFactor parses a decimal number strictly between 0 and 1, such as 0.5.
func parseFactor(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if !isDecimal(s) || err != nil || f <= 0 || f >= 1 {
		return 0, fmt.Errorf("invalid factor %q: expected a number between 0 and 1 (exclusive), such as 0.5", s)
	}
	return f, nil
}

// parseProtocol returns the parser of a route's (ingest) or a target's
// (delivery) protocol key.
func parseProtocol(known ...string) func(string) (string, error) {
	return func(s string) (string, error) {
		if slices.Contains(known, s) {
			return s, nil
		}
		return "", fmt.Errorf("unknown protocol %q: expected %s", s, strings.Join(known, ", "))
	}
}

func parseCompression(s string) (string, error) {
	switch s {
	case CompressionGzip:
		return s, nil
	case "none":
		return "", nil
	}
	return "", fmt.Errorf("unknown compression %q: expected gzip or none", s)
}

// parseByteRate parses a rate in bytes per second: a size and "/s", such as
// 10MiB/s.
func parseByteRate(s string) (int64, error) {
	size, ok := strings.CutSuffix(strings.TrimSpace(s), "/s")
	if !ok {
		return 0, fmt.Errorf("invalid byte rate %q: expected a size per second, such as 10MiB/s", s)
	}
	n, err := parseSize(MinBatchBytes, maxSize)(strings.TrimSpace(size))
	if err != nil {
		return 0, fmt.Errorf("invalid byte rate %q: %v", s, err)
	}
	return n, nil
}

func parseFormat(s string) (string, error) {
	if s == FormatNDJSON {
		return s, nil
	}
	return "", fmt.Errorf("unknown batch format %q: expected ndjson", s)
}

// parseKeySource parses where a message's key comes from: header:NAME.
func parseKeySource(s string) (KeySource, error) {
	name, ok := strings.CutPrefix(s, "header:")
	if !ok {
		return KeySource{}, fmt.Errorf("invalid key source %q: expected header:NAME, such as header:X-Customer-Id", s)
	}
	h, err := parseToken("header name")(strings.TrimSpace(name))
	if err != nil {
		return KeySource{}, fmt.Errorf("invalid key source %q: %v", s, err)
	}
	return KeySource{Header: h}, nil
}
