package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/axocoatl/isolation/internal/egresstest"
	"github.com/miekg/dns"
)

var fakeZone = []string{
	"api.allowed.test. 300 IN A 203.0.113.10",
	"api.allowed.test. 300 IN AAAA 2001:db8::10",
	"api.allowed.test. 300 IN TXT \"hello\"",
	"alias.allowed.test. 300 IN CNAME api.allowed.test.",
	"rebind.allowed.test. 300 IN A 169.254.169.254",
	"rebind.allowed.test. 300 IN A 127.0.0.1",
	"rebind.allowed.test. 300 IN AAAA ::ffff:127.0.0.1",
	"mixed.allowed.test. 300 IN A 127.0.0.1",
	"mixed.allowed.test. 300 IN A 203.0.113.11",
	"private.allowed.test. 300 IN A 10.1.2.3",
	"evil.test. 300 IN A 203.0.113.66",
}

func bigZone() []string {
	z := slices.Clone(fakeZone)
	for i := range 60 {
		z = append(z, fmt.Sprintf("big.allowed.test. 300 IN A 203.0.113.%d", 100+i))
	}
	return z
}

func answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		case *dns.CNAME:
			out = append(out, "CNAME "+v.Target)
		}
	}
	return out
}

func TestDNSServer(t *testing.T) {
	defer egresstest.MarkTestNetPublic()()
	up := startFakeDNS(t, bigZone()...)
	tg := newTestGate(t, GateConfig{Resolver: up.Addr, AllowPrivate: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}})
	release := tg.Bind(netip.MustParseAddr("127.0.0.2"), NewPolicy(mustPatterns(t, "**.allowed.test:443")...), "call-1")
	defer release()

	for _, tc := range []struct {
		name  string
		src   string
		q     string
		qtype uint16
		tcp   bool
		rcode int
		want  []string
	}{
		{"allowed A", "127.0.0.2", "api.allowed.test.", dns.TypeA, false, dns.RcodeSuccess, []string{"203.0.113.10"}},
		{"allowed AAAA over TCP", "127.0.0.2", "api.allowed.test.", dns.TypeAAAA, true, dns.RcodeSuccess, []string{"2001:db8::10"}},
		{"case-insensitive", "127.0.0.2", "API.Allowed.TEST.", dns.TypeA, false, dns.RcodeSuccess, []string{"203.0.113.10"}},
		{"CNAME chain", "127.0.0.2", "alias.allowed.test.", dns.TypeA, false, dns.RcodeSuccess, []string{"CNAME api.allowed.test.", "203.0.113.10"}},
		{"rebinding to metadata and loopback dropped", "127.0.0.2", "rebind.allowed.test.", dns.TypeA, false, dns.RcodeSuccess, nil},
		{"mapped loopback dropped", "127.0.0.2", "rebind.allowed.test.", dns.TypeAAAA, false, dns.RcodeSuccess, nil},
		{"denied address dropped, public kept", "127.0.0.2", "mixed.allowed.test.", dns.TypeA, false, dns.RcodeSuccess, []string{"203.0.113.11"}},
		{"allow_private reopens", "127.0.0.2", "private.allowed.test.", dns.TypeA, false, dns.RcodeSuccess, []string{"10.1.2.3"}},
		{"nxdomain passed on", "127.0.0.2", "nope.allowed.test.", dns.TypeA, false, dns.RcodeNameError, nil},
		{"exfiltration name refused", "127.0.0.2", "c2VjcmV0.evil.test.", dns.TypeA, false, dns.RcodeRefused, nil},
		{"exfiltration over TCP refused", "127.0.0.2", "c2VjcmV0tcp.evil.test.", dns.TypeA, true, dns.RcodeRefused, nil},
		{"suffix trick refused", "127.0.0.2", "evilallowed.test.", dns.TypeA, false, dns.RcodeRefused, nil},
		{"suffix trick 2 refused", "127.0.0.2", "allowed.test.evil.test.", dns.TypeA, false, dns.RcodeRefused, nil},
		{"TXT refused", "127.0.0.2", "api.allowed.test.", dns.TypeTXT, false, dns.RcodeRefused, nil},
		{"ANY refused", "127.0.0.2", "api.allowed.test.", dns.TypeANY, false, dns.RcodeRefused, nil},
		{"MX refused", "127.0.0.2", "api.allowed.test.", dns.TypeMX, false, dns.RcodeRefused, nil},
		{"unbound source refused", "127.0.0.3", "api.allowed.test.", dns.TypeA, false, dns.RcodeRefused, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tg.dnsQuery(t, tc.src, tc.q, tc.qtype, tc.tcp)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			}
			if got := answers(r); !slices.Equal(got, tc.want) {
				t.Errorf("answers %v, want %v", got, tc.want)
			}
			for _, rr := range r.Answer {
				if rr.Header().Ttl > maxAnswerTTL {
					t.Errorf("TTL %d over the cap", rr.Header().Ttl)
				}
			}
		})
	}
	// Upstream saw no refused name and no refused type.
	for _, q := range up.Queries() {
		if !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" A")]) && !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" AAAA")]) {
			t.Errorf("upstream saw %q", q)
		}
	}
	for _, s := range []string{"evil", "TXT", "ANY", "MX"} {
		if up.Saw(s) {
			t.Errorf("upstream saw a query containing %q: %v", s, up.Queries())
		}
	}

	t.Run("truncated without EDNS, whole over TCP", func(t *testing.T) {
		r := tg.dnsQuery(t, "127.0.0.2", "big.allowed.test.", dns.TypeA, false)
		if !r.Truncated {
			t.Errorf("60 A records in a 512-byte UDP answer: not truncated (%d answers)", len(r.Answer))
		}
		r = tg.dnsQuery(t, "127.0.0.2", "big.allowed.test.", dns.TypeA, true)
		if len(r.Answer) != 60 {
			t.Errorf("over TCP: %d answers, want 60", len(r.Answer))
		}
	})

	t.Run("release unbinds", func(t *testing.T) {
		release()
		if r := tg.dnsQuery(t, "127.0.0.2", "api.allowed.test.", dns.TypeA, false); r.Rcode != dns.RcodeRefused {
			t.Errorf("after release: %s", dns.RcodeToString[r.Rcode])
		}
	})
	if s := tg.Stats(); s.QueriesDenied == 0 || s.QueriesAnswered == 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestDNSServerTestNetDeniedByDefault(t *testing.T) {
	up := startFakeDNS(t, fakeZone...)
	tg := newTestGate(t, GateConfig{Resolver: up.Addr})
	defer tg.Bind(netip.MustParseAddr("127.0.0.2"), NewPolicy(mustPatterns(t, "api.allowed.test:443")...), "c")()
	r := tg.dnsQuery(t, "127.0.0.2", "api.allowed.test.", dns.TypeA, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("TEST-NET answer without the test switch: %s %v", dns.RcodeToString[r.Rcode], answers(r))
	}
}
