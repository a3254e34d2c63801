package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalidPattern is the class of every ParsePattern error.
var ErrInvalidPattern = errors.New("invalid egress pattern")

// PatternError says which pattern was refused and why. It matches ErrInvalidPattern.
type PatternError struct {
	// Pattern is the input (truncated to 100 bytes).
	Pattern string
	// Part is what is wrong: "host", "port", "proto", "cidr" or "pattern".
	Part string
	// Reason is a sentence saying what is wrong and what to write instead.
	Reason string
}

func (e *PatternError) Error() string {
	return fmt.Sprintf("%s %q: %s: %s", ErrInvalidPattern, e.Pattern, e.Part, e.Reason)
}

// Is matches ErrInvalidPattern.
func (e *PatternError) Is(target error) bool { return target == ErrInvalidPattern }

// wildcard says how a name pattern matches names below its host.
type wildcard uint8

const (
	exact   wildcard = iota // the host itself
	subOnly                 // "*.example.com": proper subdomains only
	subApex                 // "**.example.com": the apex and its subdomains
)

// Proto of a CIDR pattern.
const (
	ProtoAny = ""
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// Pattern is one entry of an egress allow-list: either a host name (exact or wildcard) with a
// port, reached over TCP through the proxy, or an address prefix with an optional port and
// protocol. Patterns are comparable values.
type Pattern struct {
	host   string // lowercase, no trailing dot; for wildcards the suffix without "*." / "**."
	wild   wildcard
	prefix netip.Prefix // valid for CIDR patterns
	port   uint16       // 0: any (CIDR patterns only; name patterns always have one)
	proto  string       // ProtoAny, ProtoTCP or ProtoUDP; name patterns are ProtoTCP
}

// maxPatternLen bounds the input: a name is at most 253 bytes, plus wildcard, port and proto.
const maxPatternLen = 300

// ParsePattern parses one pattern:
//
//	api.example.com:443          exactly that host, port 443
//	*.example.com:443            any proper subdomain of example.com (not example.com itself)
//	**.example.com:443           example.com and any subdomain
//	203.0.113.0/24               any port and protocol to that range (a bare address is a /32)
//	203.0.113.0/24:5432          port 5432, TCP or UDP
//	203.0.113.0/24:5432/tcp      port 5432, TCP only ("/udp": UDP only)
//	[2001:db8::/32]:443/tcp      IPv6 with a port (brackets); "2001:db8::/32" without one
//
// Names are matched case-insensitively, must be ASCII (write IDNs as xn--), and need a port: a
// name pattern is reached over TCP through the proxy, so "/udp" on a name is refused. A wildcard
// needs at least two labels after it ("*.com" is refused). Errors are *PatternError.
func ParsePattern(s string) (Pattern, error) {
	in := s
	bad := func(part, reason string) (Pattern, error) {
		if len(in) > 100 {
			in = in[:100] + "…"
		}
		return Pattern{}, &PatternError{Pattern: in, Part: part, Reason: reason}
	}
	if s == "" {
		return bad("pattern", "empty")
	}
	if len(s) > maxPatternLen {
		return bad("pattern", fmt.Sprintf("longer than %d bytes", maxPatternLen))
	}
	if strings.TrimSpace(s) != s {
		return bad("pattern", "leading or trailing space")
	}

	// Split off "/proto" and ":port" from the right. A CIDR's own "/" is followed by digits, a
	// proto's by letters, which tells them apart.
	proto := ""
	if i := strings.LastIndexByte(s, '/'); i >= 0 && i+1 < len(s) && !isDigit(s[i+1]) {
		proto = s[i+1:]
		s = s[:i]
		if proto != ProtoTCP && proto != ProtoUDP {
			return bad("proto", fmt.Sprintf("%q: write tcp or udp", proto))
		}
	}
	hostPart, portPart, hasPort := "", "", false
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return bad("cidr", "missing ']'")
		}
		hostPart = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return bad("port", "after ']' only \":port\" may follow")
			}
			portPart, hasPort = rest[1:], true
		}
		if _, err := netip.ParsePrefix(hostPart); err != nil {
			if _, err := netip.ParseAddr(hostPart); err != nil {
				return bad("cidr", fmt.Sprintf("%q inside brackets is not an IPv6 address or prefix", hostPart))
			}
		}
	case strings.Count(s, ":") > 1:
		// Bare IPv6 without brackets: no port possible.
		hostPart = s
	default:
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			hostPart, portPart, hasPort = s[:i], s[i+1:], true
		} else {
			hostPart = s
		}
	}
	if proto != "" && !hasPort {
		return bad("port", "a protocol needs a port before it (\"…:5432/tcp\")")
	}
	var port uint16
	if hasPort {
		n, err := strconv.ParseUint(portPart, 10, 16)
		if err != nil || n == 0 || portPart[0] == '+' || (len(portPart) > 1 && portPart[0] == '0') {
			return bad("port", fmt.Sprintf("%q is not a port (1–65535)", portPart))
		}
		port = uint16(n)
	}

	// An address or prefix?
	if strings.Contains(hostPart, "%") {
		return bad("cidr", "an IPv6 zone is not allowed")
	}
	if pfx, ok := parseCIDR(hostPart); ok {
		if pfx.Masked() != pfx {
			return bad("cidr", fmt.Sprintf("%s has host bits set: write %s", pfx, pfx.Masked()))
		}
		if pfx.Addr().Is4In6() {
			return bad("cidr", "an IPv4-mapped IPv6 prefix: write the IPv4 form")
		}
		return Pattern{prefix: pfx, port: port, proto: proto}, nil
	}
	if strings.ContainsAny(hostPart, "/[]") || looksNumeric(hostPart) {
		return bad("cidr", fmt.Sprintf("%q is not an address or prefix", hostPart))
	}

	// A name.
	p := Pattern{proto: ProtoTCP, port: port}
	name := hostPart
	switch {
	case strings.HasPrefix(name, "**."):
		p.wild, name = subApex, name[3:]
	case strings.HasPrefix(name, "*."):
		p.wild, name = subOnly, name[2:]
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if reason := checkName(name); reason != "" {
		return bad("host", reason)
	}
	if p.wild != exact && !strings.Contains(name, ".") {
		return bad("host", fmt.Sprintf("a wildcard needs at least two labels after it (%q would allow a whole top-level domain)", name))
	}
	if !hasPort {
		return bad("port", fmt.Sprintf("a name needs a port: write %s:443", hostPart))
	}
	if proto == ProtoUDP {
		return bad("proto", "names are reached over TCP only (through the proxy); UDP needs a CIDR pattern")
	}
	p.host = name
	return p, nil
}

// ParsePatterns parses each string; the first error is returned.
func ParsePatterns(ss []string) ([]Pattern, error) {
	out := make([]Pattern, 0, len(ss))
	for _, s := range ss {
		p, err := ParsePattern(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func parseCIDR(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p, err == nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, a.BitLen()), true
}

// looksNumeric is true for hosts made only of digits and dots ("10.1", "1.2.3.4.5"): never a
// name we want to resolve, since some resolvers read them as addresses.
func looksNumeric(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) && s[i] != '.' {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// checkName returns "" for a valid lowercase DNS host name, else the reason. Labels are 1–63
// bytes of a-z, 0-9, '-', '_' (not starting or ending with '-'); the name is at most 253 bytes.
func checkName(name string) string {
	if name == "" {
		return "empty host name"
	}
	if len(name) > 253 {
		return "host name longer than 253 bytes"
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return fmt.Sprintf("%q has an empty label", name)
		}
		if len(label) > 63 {
			return fmt.Sprintf("label %q is longer than 63 bytes", label[:20]+"…")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Sprintf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || isDigit(c) || c == '-' || c == '_') {
				if c == '*' {
					return "'*' only as the whole first label (\"*.example.com\" or \"**.example.com\")"
				}
				return fmt.Sprintf("%q: names are ASCII letters, digits, '-' and '_' (write IDNs as xn--…)", name)
			}
		}
	}
	return ""
}

// IsName reports whether the pattern is a name pattern (else a CIDR pattern).
func (p Pattern) IsName() bool { return p.host != "" }

// String is the canonical form, which ParsePattern accepts.
func (p Pattern) String() string {
	if p.IsName() {
		pre := ""
		switch p.wild {
		case subOnly:
			pre = "*."
		case subApex:
			pre = "**."
		}
		return pre + p.host + ":" + strconv.Itoa(int(p.port))
	}
	s := p.prefix.String()
	if p.prefix.IsSingleIP() {
		s = p.prefix.Addr().String()
	}
	if p.port == 0 {
		return s
	}
	if p.prefix.Addr().Is6() {
		s = "[" + s + "]"
	}
	s += ":" + strconv.Itoa(int(p.port))
	if p.proto != "" {
		s += "/" + p.proto
	}
	return s
}

// MarshalText implements encoding.TextMarshaler (the canonical form).
func (p Pattern) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParsePattern.
func (p *Pattern) UnmarshalText(b []byte) error {
	q, err := ParsePattern(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// matchName reports whether the lowercase, dot-free-at-the-end name matches the name pattern's
// host part (ports are checked by the caller).
func (p Pattern) matchName(name string) bool {
	switch p.wild {
	case exact:
		return name == p.host
	case subOnly:
		return len(name) > len(p.host)+1 && strings.HasSuffix(name, p.host) && name[len(name)-len(p.host)-1] == '.'
	default:
		return name == p.host || (len(name) > len(p.host)+1 && strings.HasSuffix(name, p.host) && name[len(name)-len(p.host)-1] == '.')
	}
}

// matchAddr reports whether a CIDR pattern allows ap over proto ("tcp" or "udp").
func (p Pattern) matchAddr(ap netip.AddrPort, proto string) bool {
	if p.IsName() {
		return false
	}
	if p.port != 0 && p.port != ap.Port() {
		return false
	}
	if p.proto != ProtoAny && p.proto != proto {
		return false
	}
	return p.prefix.Contains(ap.Addr().Unmap())
}

// intersect returns the pattern allowing what both a and b allow, if any. Name patterns form a
// laminar family (two of them are nested or disjoint), and so do prefixes, so the intersection
// is always one pattern or none.
func intersect(a, b Pattern) (Pattern, bool) {
	if a.IsName() != b.IsName() {
		return Pattern{}, false
	}
	if a.IsName() {
		if a.port != b.port {
			return Pattern{}, false
		}
		switch {
		case nameCovers(a, b):
			return b, true
		case nameCovers(b, a):
			return a, true
		}
		return Pattern{}, false
	}
	if a.prefix.Addr().Is4() != b.prefix.Addr().Is4() || !a.prefix.Overlaps(b.prefix) {
		return Pattern{}, false
	}
	r := a
	if b.prefix.Bits() > a.prefix.Bits() {
		r.prefix = b.prefix
	}
	switch {
	case a.port == 0:
		r.port = b.port
	case b.port == 0 || b.port == a.port:
		r.port = a.port
	default:
		return Pattern{}, false
	}
	switch {
	case a.proto == ProtoAny:
		r.proto = b.proto
	case b.proto == ProtoAny || b.proto == a.proto:
		r.proto = a.proto
	default:
		return Pattern{}, false
	}
	return r, true
}

// covers reports whether everything b allows, a allows too.
func covers(a, b Pattern) bool {
	r, ok := intersect(a, b)
	return ok && r == b
}

// nameCovers reports whether name pattern a allows every name b allows (ports ignored).
func nameCovers(a, b Pattern) bool {
	switch b.wild {
	case exact:
		return a.matchName(b.host)
	case subOnly:
		// b = every proper subdomain of b.host.
		switch a.wild {
		case exact:
			return false
		case subOnly:
			return a.matchName(b.host) || a.host == b.host
		default:
			return a.matchName(b.host)
		}
	default:
		// b = b.host and its subdomains.
		return a.wild != exact && a.matchName(b.host)
	}
}
