package egress

import (
	"context"
	"net/netip"
	"testing"

	"github.com/axocoatl/isolation/internal/egresstest"
	"github.com/miekg/dns"
)

// FuzzDNSRequest feeds untrusted request bytes to the DNS server's reply logic (after miekg/dns
// parses them, as the server does): whatever arrives, a reply is built, it is REFUSED unless it
// is one A/AAAA/CNAME question for an allowed name, and upstream never sees another name.
func FuzzDNSRequest(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"api.allowed.test.", dns.TypeA}, {"x.evil.test.", dns.TypeA}, {"api.allowed.test.", dns.TypeTXT}, {"rebind.allowed.test.", dns.TypeAAAA}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.SetEdns0(4096, true)
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0})
	restore := egresstest.MarkTestNetPublic()
	f.Cleanup(restore)
	up := startFakeDNS(f, fakeZone...)
	g, err := NewGate(GateConfig{Resolver: up.addr, Logger: discardLogger()})
	if err != nil {
		f.Fatal(err)
	}
	src := netip.MustParseAddr("127.0.0.2")
	defer g.Bind(src, NewPolicy(mustPatterns(f, "**.allowed.test:443")...), "fuzz")()
	f.Fuzz(func(t *testing.T, b []byte) {
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			return
		}
		m := g.dnsReply(context.Background(), src, r, false)
		if m == nil {
			t.Fatal("no reply")
		}
		if _, err := m.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		ok := len(r.Question) == 1 && r.Opcode == dns.OpcodeQuery && !r.Response && r.Question[0].Qclass == dns.ClassINET
		if ok {
			q := r.Question[0]
			n, valid := normalizeName(q.Name)
			ok = valid && dns.IsSubDomain("allowed.test", n) && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeCNAME)
		}
		if !ok && m.Rcode != dns.RcodeRefused {
			t.Fatalf("answered %s to %v", dns.RcodeToString[m.Rcode], r.Question)
		}
		for _, q := range up.queries() {
			if !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" A")]) && !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" AAAA")]) && !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" CNAME")]) {
				t.Fatalf("upstream saw %q", q)
			}
		}
	})
}
