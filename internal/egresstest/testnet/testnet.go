// Package testnet holds test fixtures of the egress tests: a fake upstream DNS server (miekg/dns)
// that logs every question it receives, and self-signed TLS certificates. Tests only: it is kept
// apart from package egresstest, which production code imports.
package testnet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a fake upstream DNS server on 127.0.0.1 (UDP and TCP, same port).
type DNS struct {
	// Addr is "127.0.0.1:port".
	Addr string

	mu   sync.Mutex // guards log
	log  []string   // "name TYPE"
	zone map[string][]dns.RR
}

// StartDNS serves records (zone-file lines, e.g. "api.allowed.test. 300 IN A 203.0.113.10")
// until the test ends. CNAME targets in the zone are added to answers; unknown names are
// NXDOMAIN.
func StartDNS(t testing.TB, records ...string) *DNS {
	t.Helper()
	f := &DNS{zone: map[string][]dns.RR{}}
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatal(err)
		}
		n := strings.ToLower(rr.Header().Name)
		f.zone[n] = append(f.zone[n], rr)
	}
	h := dns.HandlerFunc(f.serve)
	pc, ln := ListenUDPAndTCP(t)
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()                           //nolint:errcheck
	go ts.ActivateAndServe()                           //nolint:errcheck
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() }) //nolint:errcheck
	f.Addr = pc.LocalAddr().String()
	return f
}

// ListenUDPAndTCP listens on one free port of 127.0.0.1 for both UDP and TCP, as a DNS server
// does: the port the kernel picks for UDP may be taken for TCP, so it tries others.
func ListenUDPAndTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal(err)
	return nil, nil
}

func (f *DNS) serve(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	if len(r.Question) == 1 {
		q := r.Question[0]
		f.mu.Lock()
		f.log = append(f.log, q.Name+" "+dns.TypeToString[q.Qtype])
		f.mu.Unlock()
		rrs, ok := f.zone[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype != q.Qtype && rr.Header().Rrtype != dns.TypeCNAME {
				continue
			}
			m.Answer = append(m.Answer, rr)
			if c, ok := rr.(*dns.CNAME); ok && q.Qtype != dns.TypeCNAME {
				for _, rr2 := range f.zone[strings.ToLower(c.Target)] {
					if rr2.Header().Rrtype == q.Qtype {
						m.Answer = append(m.Answer, rr2)
					}
				}
			}
		}
	}
	if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
		size := 512
		if o := r.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m) //nolint:errcheck
}

// Queries returns every question received so far, as "name TYPE".
func (f *DNS) Queries() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// Saw reports whether any question contained s (case-insensitive).
func (f *DNS) Saw(s string) bool {
	for _, q := range f.Queries() {
		if strings.Contains(strings.ToLower(q), strings.ToLower(s)) {
			return true
		}
	}
	return false
}

// Cert returns a self-signed certificate for names and a pool that trusts it.
func Cert(t testing.TB, names ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}
