package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

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
	g, err := NewGate(GateConfig{Resolver: up.Addr, Logger: discardLogger()})
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
		for _, q := range up.Queries() {
			if !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" A")]) && !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" AAAA")]) && !dns.IsSubDomain("allowed.test.", q[:len(q)-len(" CNAME")]) {
				t.Fatalf("upstream saw %q", q)
			}
		}
	})
}

// FuzzSniffName feeds untrusted first bytes (a ClientHello or an HTTP request head) to the
// parser the proxy uses: it never panics, asks for more only while the input could still grow
// into a valid prefix within the read bound, and whatever name it returns is what the bytes say.
func FuzzSniffName(f *testing.F) {
	f.Add(clientHelloBytes(f, "api.allowed.test"))
	f.Add(clientHelloBytes(f, ""))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: api.allowed.test:443\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))
	f.Add([]byte("CONNECT evil.test:443 HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 2*maxSniff {
			return
		}
		name, _, err := sniffName(b)
		if err == nil && name == "" {
			t.Fatal("no error and no name")
		}
		if err == nil && !bytes.Contains(b, []byte(name)) {
			t.Fatalf("name %q is not in the input", name)
		}
	})
}

// clientHelloBytes returns the first flight of a real crypto/tls client for sni.
func clientHelloBytes(t testing.TB, sni string) []byte {
	c1, c2 := net.Pipe()
	go func() {
		tls.Client(c1, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
	}()
	buf := make([]byte, 64<<10)
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c2.Read(buf)
	c1.Close()
	c2.Close()
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestSniffName(t *testing.T) {
	hello := clientHelloBytes(t, "api.allowed.test")
	for _, tc := range []struct {
		name string
		in   []byte
		want string
		err  error // nil: no error; errNeedMore; errAny: another error
	}{
		{"ClientHello", hello, "api.allowed.test", nil},
		{"ClientHello prefix", hello[:len(hello)-1], "", errNeedMore},
		{"ClientHello header only", hello[:3], "", errNeedMore},
		{"ClientHello split across records", splitRecords(hello, 100), "api.allowed.test", nil},
		{"ClientHello without SNI", clientHelloBytes(t, ""), "", errNoName},
		{"not a ClientHello", []byte{0x16, 3, 1, 0, 4, 2, 0, 0, 0}, "", errAny},
		{"HTTP", []byte("GET / HTTP/1.1\r\nhost: API.x.com:8080\r\n\r\n"), "API.x.com", nil},
		{"HTTP prefix", []byte("GET / HTTP/1.1\r\nHost: a"), "", errNeedMore},
		{"HTTP two hosts", []byte("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), "", errAny},
		{"HTTP no host", []byte("GET / HTTP/1.0\r\n\r\n"), "", errNoName},
		{"HTTP CONNECT", []byte("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), "", errAny},
		{"HTTP/2 preface", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "", errAny},
		{"binary", []byte{0, 1, 2, 3}, "", errAny},
		{"SSH", []byte("SSH-2.0-OpenSSH_9.2\r\n"), "", errNeedMore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := sniffName(tc.in)
			switch {
			case tc.err == nil && err != nil, tc.err == errAny && (err == nil || errors.Is(err, errNeedMore)),
				tc.err != nil && tc.err != errAny && !errors.Is(err, tc.err):
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("name %q, want %q", got, tc.want)
			}
		})
	}
}

var errAny = errors.New("any error")

// splitRecords re-frames a single-record TLS handshake into records of at most n bytes.
func splitRecords(rec []byte, n int) []byte {
	body := rec[5:]
	var out []byte
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, 0x16, rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	return out
}
