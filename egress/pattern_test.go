package egress

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/axocoatl/isolation/internal/egresstest"
)

func TestParsePattern(t *testing.T) {
	for _, tc := range []struct{ in, canon string }{
		{"api.github.com:443", "api.github.com:443"},
		{"API.GitHub.com.:443", "api.github.com:443"},
		{"api.github.com:443/tcp", "api.github.com:443"},
		{"*.pypi.org:443", "*.pypi.org:443"},
		{"**.pypi.org:80", "**.pypi.org:80"},
		{"localhost:8080", "localhost:8080"},
		{"xn--bcher-kva.example:443", "xn--bcher-kva.example:443"},
		{"203.0.113.0/24:5432/tcp", "203.0.113.0/24:5432/tcp"},
		{"203.0.113.0/24:53/udp", "203.0.113.0/24:53/udp"},
		{"203.0.113.0/24:5432", "203.0.113.0/24:5432"},
		{"203.0.113.0/24", "203.0.113.0/24"},
		{"203.0.113.7", "203.0.113.7"},
		{"203.0.113.7:443", "203.0.113.7:443"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"[2001:db8::/32]:443/tcp", "[2001:db8::/32]:443/tcp"},
		{"[2001:db8::1]:443", "[2001:db8::1]:443"},
		{"0.0.0.0/0:443", "0.0.0.0/0:443"},
	} {
		p, err := ParsePattern(tc.in)
		if err != nil {
			t.Errorf("ParsePattern(%q): %v", tc.in, err)
			continue
		}
		if got := p.String(); got != tc.canon {
			t.Errorf("ParsePattern(%q).String() = %q, want %q", tc.in, got, tc.canon)
		}
		q, err := ParsePattern(p.String())
		if err != nil || q != p {
			t.Errorf("round trip of %q: %v, %v != %v", tc.in, err, q, p)
		}
	}
}

func TestParsePatternErrors(t *testing.T) {
	for _, tc := range []struct{ in, part, says string }{
		{"", "pattern", "empty"},
		{" api.x.com:443", "pattern", "space"},
		{"api.github.com", "port", "needs a port"},
		{"api.github.com:0", "port", "not a port"},
		{"api.github.com:65536", "port", "not a port"},
		{"api.github.com:+443", "port", "not a port"},
		{"api.github.com:0443", "port", "not a port"},
		{"api.github.com:https", "port", "not a port"},
		{"api.github.com:443/udp", "proto", "TCP only"},
		{"api.github.com:443/sctp", "proto", "tcp or udp"},
		{"api.github.com/tcp", "port", "needs a port"},
		{"*.com:443", "host", "two labels"},
		{"**.com:443", "host", "two labels"},
		{"*:443", "host", "'*'"},
		{"a.*.com:443", "host", "'*'"},
		{"*api.github.com:443", "host", "'*'"},
		{"-a.com:443", "host", "'-'"},
		{"a..com:443", "host", "empty label"},
		{"bücher.example:443", "host", "xn--"},
		{"a b.com:443", "host", "ASCII"},
		{strings.Repeat("a", 64) + ".com:443", "host", "63"},
		{"203.0.113.1/24", "cidr", "host bits"},
		{"203.0.113.0/33", "cidr", "not an address"},
		{"10.1:80", "cidr", "not an address"},
		{"1.2.3.4.5:80", "cidr", "not an address"},
		{"[2001:db8::/32]443", "port", "after ']'"},
		{"[nope]:443", "cidr", "not an IPv6"},
		{"[2001:db8::1:443", "cidr", "']'"},
		{"::ffff:10.0.0.0/104", "cidr", "IPv4-mapped"},
		{"fe80::1%eth0", "cidr", "zone"},
		{"203.0.113.0/24/tcp", "port", "needs a port"},
		{strings.Repeat("a", 400), "pattern", "longer"},
	} {
		_, err := ParsePattern(tc.in)
		var pe *PatternError
		if !errors.As(err, &pe) || !errors.Is(err, ErrInvalidPattern) {
			t.Errorf("ParsePattern(%q) = %v, want a *PatternError", tc.in, err)
			continue
		}
		if pe.Part != tc.part || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ParsePattern(%q) = %v (part %q), want part %q saying %q", tc.in, err, pe.Part, tc.part, tc.says)
		}
	}
}

func TestAllowsName(t *testing.T) {
	p := NewPolicy(mustPatterns(t, "api.allowed.test:443", "*.sub.test:443", "**.apex.test:80")...)
	for _, tc := range []struct {
		name string
		port uint16
		want bool
	}{
		{"api.allowed.test", 443, true},
		{"API.Allowed.Test.", 443, true},
		{"api.allowed.test", 80, false},
		{"allowed.test", 443, false},
		{"x.api.allowed.test", 443, false},
		{"evilallowed.test", 443, false},
		{"api.allowed.test.evil.test", 443, false},
		{"evilapi.allowed.test", 443, false},
		{"a.sub.test", 443, true},
		{"a.b.sub.test", 443, true},
		{"sub.test", 443, false},
		{"evilsub.test", 443, false},
		{"apex.test", 80, true},
		{"x.apex.test", 80, true},
		{"xapex.test", 80, false},
		{"apex.test.evil", 80, false},
		{"203.0.113.1", 443, false},
		{"", 443, false},
		{"api.allowed.test\x00", 443, false},
	} {
		if got := p.AllowsName(tc.name, tc.port); got != tc.want {
			t.Errorf("AllowsName(%q, %d) = %v, want %v", tc.name, tc.port, got, tc.want)
		}
	}
}

func TestAllowsAddr(t *testing.T) {
	p := NewPolicy(mustPatterns(t, "203.0.113.0/24:5432/tcp", "198.51.100.7", "[2001:db8::/32]:443", "api.allowed.test:443")...)
	for _, tc := range []struct {
		ap    string
		proto string
		want  bool
	}{
		{"203.0.113.9:5432", "tcp", true},
		{"203.0.113.9:5432", "udp", false},
		{"203.0.113.9:5433", "tcp", false},
		{"203.0.114.9:5432", "tcp", false},
		{"[::ffff:203.0.113.9]:5432", "tcp", true}, // judged by its IPv4 form (the deny set refuses dialing it)
		{"198.51.100.7:1", "udp", true},
		{"198.51.100.8:1", "udp", false},
		{"[2001:db8::5]:443", "tcp", true},
		{"[2001:db8::5]:443", "udp", true},
		{"[2001:db9::5]:443", "tcp", false},
	} {
		if got := p.AllowsAddr(netip.MustParseAddrPort(tc.ap), tc.proto); got != tc.want {
			t.Errorf("AllowsAddr(%s, %s) = %v, want %v", tc.ap, tc.proto, got, tc.want)
		}
	}
}

func TestEffective(t *testing.T) {
	for _, tc := range []struct {
		name           string
		asked, granted []string
		allowPrivate   []string
		want           string
		notGranted     []string // "pattern: reason prefix"
	}{
		{name: "nothing asked", granted: []string{"**.x.com:443"}},
		{name: "nothing granted", asked: []string{"api.x.com:443"},
			notGranted: []string{"api.x.com:443: not granted"}},
		{name: "covered by wildcard", asked: []string{"api.x.com:443"}, granted: []string{"**.x.com:443"},
			want: "api.x.com:443"},
		{name: "port differs", asked: []string{"api.x.com:80"}, granted: []string{"**.x.com:443"},
			notGranted: []string{"api.x.com:80: not granted"}},
		{name: "wider asked is narrowed, not widened", asked: []string{"**.x.com:443"}, granted: []string{"api.x.com:443", "*.y.x.com:443", "other.com:443"},
			want: "*.y.x.com:443 api.x.com:443", notGranted: []string{"**.x.com:443: narrowed to api.x.com:443, *.y.x.com:443"}},
		{name: "sub-only does not cover apex", asked: []string{"x.com:443"}, granted: []string{"*.x.com:443"},
			notGranted: []string{"x.com:443: not granted"}},
		{name: "apex wildcard covers sub-only", asked: []string{"*.x.com:443"}, granted: []string{"**.x.com:443"},
			want: "*.x.com:443"},
		{name: "cidr narrowed", asked: []string{"0.0.0.0/0"}, granted: []string{"8.8.8.0/24:53/udp"},
			want: "8.8.8.0/24:53/udp", notGranted: []string{"0.0.0.0/0: narrowed to 8.8.8.0/24:53/udp"}},
		{name: "cidr covered", asked: []string{"8.8.8.8:53/udp"}, granted: []string{"8.8.8.0/24"},
			want: "8.8.8.8:53/udp"},
		{name: "proto mismatch", asked: []string{"8.8.8.8:53/udp"}, granted: []string{"8.8.8.0/24:53/tcp"},
			notGranted: []string{"8.8.8.8:53/udp: not granted"}},
		{name: "private cidr denied", asked: []string{"10.1.0.0/16:5432"}, granted: []string{"10.0.0.0/8"},
			notGranted: []string{"10.1.0.0/16:5432: private or reserved"}},
		{name: "metadata denied", asked: []string{"169.254.169.254:80"}, granted: []string{"0.0.0.0/0"},
			notGranted: []string{"169.254.169.254:80: private or reserved"}},
		{name: "allow_private reopens", asked: []string{"10.1.0.0/16:5432"}, granted: []string{"10.0.0.0/8"}, allowPrivate: []string{"10.1.2.0/24"},
			want: "10.1.0.0/16:5432"},
		{name: "test-net denied by default", asked: []string{"203.0.113.0/24:443"}, granted: []string{"203.0.113.0/24"},
			notGranted: []string{"203.0.113.0/24:443: private or reserved"}},
		{name: "duplicates", asked: []string{"a.x.com:443", "A.x.com:443"}, granted: []string{"a.x.com:443", "a.x.com:443"},
			want: "a.x.com:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ap []netip.Prefix
			for _, s := range tc.allowPrivate {
				ap = append(ap, netip.MustParsePrefix(s))
			}
			p, ng := Effective(mustPatterns(t, tc.asked...), mustPatterns(t, tc.granted...), ap)
			if p.String() != tc.want {
				t.Errorf("policy %q, want %q", p, tc.want)
			}
			if p.IsZero() != (tc.want == "") {
				t.Errorf("IsZero = %v", p.IsZero())
			}
			if len(ng) != len(tc.notGranted) {
				t.Fatalf("not granted %v, want %v", ng, tc.notGranted)
			}
			for i, n := range ng {
				if got := n.Pattern + ": " + n.Reason; !strings.HasPrefix(got, tc.notGranted[i]) {
					t.Errorf("not granted %q, want prefix %q", got, tc.notGranted[i])
				}
			}
			// Never widened: everything effective is covered by something asked and something granted.
			for _, e := range p.Patterns() {
				if !coveredBy(e, mustPatterns(t, tc.asked...)) || !coveredBy(e, mustPatterns(t, tc.granted...)) {
					t.Errorf("%s is not within both asked and granted", e)
				}
			}
		})
	}
}

func TestEffectiveTestNetSwitch(t *testing.T) {
	restore := egresstest.MarkTestNetPublic()
	defer restore()
	p, ng := Effective(mustPatterns(t, "203.0.113.0/24:443"), mustPatterns(t, "203.0.113.0/24"), nil)
	if p.String() != "203.0.113.0/24:443" || len(ng) != 0 {
		t.Fatalf("with TEST-NET public: %q, %v", p, ng)
	}
}

func coveredBy(p Pattern, ps []Pattern) bool {
	for _, q := range ps {
		if covers(q, p) {
			return true
		}
	}
	return false
}

func TestDenied(t *testing.T) {
	d := &denyRule{hostAddrs: &hostAddrs{ttl: 1e9, list: func() ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("8.8.4.4")}, nil
	}}}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true}, {"127.1.2.3", true}, {"10.0.0.1", true}, {"172.16.0.1", true},
		{"172.31.255.255", true}, {"172.32.0.1", false}, {"192.168.1.1", true}, {"100.64.0.1", true},
		{"100.127.255.254", true}, {"100.128.0.1", false}, {"169.254.169.254", true}, {"224.0.0.251", true},
		{"239.255.255.250", true}, {"240.0.0.1", true}, {"255.255.255.255", true}, {"0.0.0.0", true},
		{"0.1.2.3", true}, {"192.0.2.1", true}, {"198.51.100.1", true}, {"203.0.113.1", true},
		{"198.18.0.1", true}, {"1.1.1.1", false}, {"93.184.216.34", false},
		{"8.8.4.4", true}, // the host's own address
		{"::1", true}, {"::", true}, {"::ffff:1.1.1.1", true}, {"::ffff:127.0.0.1", true},
		{"fc00::1", true}, {"fd12:3456::1", true}, {"fe80::1", true}, {"ff02::1", true},
		{"64:ff9b::a00:1", true}, {"2002:a00:1::1", true}, {"2001::1", true}, {"2001:db8::1", true},
		{"2606:4700::1111", false},
	} {
		if got := d.denied(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("denied(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if !d.denied(netip.Addr{}) {
		t.Error("the zero address is not denied")
	}
	d.allowPrivate = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("127.0.0.1/32")}
	for _, tc := range []struct {
		addr string
		want bool
	}{{"10.1.2.3", false}, {"10.2.0.1", true}, {"127.0.0.1", false}, {"127.0.0.2", true}, {"::ffff:10.1.2.3", true}} {
		if got := d.denied(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("with allow_private: denied(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	restore := egresstest.MarkTestNetPublic()
	if d.denied(netip.MustParseAddr("203.0.113.5")) || d.denied(netip.MustParseAddr("2001:db8::1")) || !d.denied(netip.MustParseAddr("10.9.9.9")) {
		t.Error("the test switch does not make exactly TEST-NET public")
	}
	restore()
	restore() // idempotent
	if !d.denied(netip.MustParseAddr("203.0.113.5")) {
		t.Error("restore did not deny TEST-NET again")
	}
}

func mustPatterns(t testing.TB, ss ...string) []Pattern {
	t.Helper()
	ps, err := ParsePatterns(ss)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"api.github.com:443", "*.pypi.org:443", "**.x.com:80/tcp", "203.0.113.0/24:5432/tcp",
		"[2001:db8::/32]:443/udp", "2001:db8::/32", "10.1:80", "[", "a:b:c", "*.:1", "::ffff:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePattern(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidPattern) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		q, err := ParsePattern(p.String())
		if err != nil || q != p {
			t.Fatalf("%q → %q does not round-trip: %v", s, p.String(), err)
		}
		if !covers(p, p) {
			t.Fatalf("%s does not cover itself", p)
		}
		if p.IsName() && !p.matchName(p.host) && p.wild != subOnly {
			t.Fatalf("%s does not match its own host", p)
		}
	})
}
