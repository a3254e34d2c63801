// Package fakenet builds a fake internet for the network tests, on this machine, with no real
// network: "public" hosts on documentation (TEST-NET) addresses, HTTP and TLS with a test CA for
// api.allowed.test, a DNS server that logs every query it receives, and canaries (listeners that
// count every connection or datagram) on addresses nothing may reach: 127.0.0.1 of the daemon's
// namespace, 10.20.30.40, 169.254.169.254, another public host, DNS over TLS and UDP/QUIC ports.
//
// It changes the routes of the network namespace it runs in, so it runs only in a namespace of
// its own: tests re-execute themselves with RunInNetns, and the daemon under test (the egress
// gate, the sandboxes, their per-call namespaces) lives in that namespace as if it were the
// host's. The hosts live in a second namespace behind an uplink-less bridge, joined to the first
// by a veth pair; the first routes everything to it.
package fakenet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/internal/nsthread"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Addresses of the fake internet.
const (
	AllowedIP   = "203.0.113.10" // api.allowed.test: HTTP :80 ("/" answers "allowed"; "/redirect" sends to other.test or ?to=URL; "/big" BigBytes; "/slow" never answers), TLS :443, UDP echo :7 ("echo " + the datagram)
	OtherIP     = "203.0.113.20" // other.test and every name a tool must not reach: a canary
	DNSIP       = "198.51.100.53"
	TenIP       = "10.20.30.40"
	MetadataIP  = "169.254.169.254"
	AllowedBody = "allowed"
	// BigBytes is the size of api.allowed.test's "/big" answer: over the Wasm tier's 4 MiB
	// default response cap.
	BigBytes = 5 << 20
)

// Names the fake DNS server answers (everything else: NXDOMAIN). Each is logged when asked.
var records = map[string]string{
	"api.allowed.test.":       AllowedIP,
	"allowed.test.":           AllowedIP,
	"other.test.":             OtherIP,
	"evilallowed.test.":       OtherIP,
	"allowed.test.evil.test.": OtherIP,
	"meta.allowed.test.":      MetadataIP,
	"local.allowed.test.":     "127.0.0.1",
	"ten.allowed.test.":       TenIP,
}

// Internet is a running fake internet.
type Internet struct {
	// CA is the PEM certificate of the CA that signed api.allowed.test's certificate.
	CA string
	// Resolver is the fake DNS server's address, for the egress gate.
	Resolver string

	inet    *os.File
	closers []func()

	mu      sync.Mutex
	hits    map[string]int // guarded by mu: canary name → connections/datagrams
	queries []string       // guarded by mu: "name TYPE" as received
	allowed int            // guarded by mu: requests served by api.allowed.test
}

// InNetns is set in the environment of a test re-executed by RunInNetns.
const InNetns = "AXO_FAKENET_NETNS"

// RunInNetns re-executes this test binary running only test (by name), in a new network
// namespace of its own, with env added; it returns the child's combined output and its error.
func RunInNetns(test string, env ...string) ([]byte, error) {
	cmd := exec.Command("/proc/self/exe", "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), InNetns+"=1"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	return cmd.CombinedOutput()
}

// Start builds the fake internet around the current network namespace, which must be one of its
// own (RunInNetns). Close tears it down.
func Start() (_ *Internet, err error) {
	if os.Getenv(InNetns) == "" {
		return nil, errors.New("fakenet: not in a network namespace of its own (use RunInNetns)")
	}
	in := &Internet{Resolver: DNSIP + ":53", hits: map[string]int{}}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, err
	}
	if in.inet, err = nsthread.New(nil); err != nil {
		return nil, err
	}
	in.closers = append(in.closers, func() { in.inet.Close() })
	// The uplink: 10.254.0.1 here, 10.254.0.2 in the internet; everything routes through it.
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fiup"}, PeerName: "fidown", PeerNamespace: netlink.NsFd(int(in.inet.Fd()))}
	if err := netlink.LinkAdd(up); err != nil {
		return nil, fmt.Errorf("fakenet uplink: %w", err)
	}
	if err := addrUp(nil, "fiup", "10.254.0.1/30"); err != nil {
		return nil, err
	}
	if err := netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.254.0.2")}); err != nil {
		return nil, fmt.Errorf("fakenet default route: %w", err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(in.inet.Fd()))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if err := addrUp(h, "fidown", "10.254.0.2/30"); err != nil {
		return nil, err
	}
	ilo, _ := h.LinkByName("lo")
	_ = h.LinkSetUp(ilo)
	// The hosts: addresses on a bridge with no uplink.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("fakenet bridge: %w", err)
	}
	for _, a := range []string{AllowedIP + "/24", OtherIP + "/24", DNSIP + "/24", TenIP + "/32", MetadataIP + "/32"} {
		if err := addrUp(h, "br0", a); err != nil {
			return nil, err
		}
	}
	if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.254.0.1")}); err != nil {
		return nil, fmt.Errorf("fakenet return route: %w", err)
	}
	if err := in.serve(); err != nil {
		return nil, err
	}
	return in, nil
}

func addrUp(h *netlink.Handle, link, cidr string) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(link)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("fakenet address %s on %s: %w", cidr, link, err)
	}
	return h.LinkSetUp(l)
}

// serve starts the servers: listeners are opened from a thread inside the internet's namespace
// (the loopback canary in this one).
func (in *Internet) serve() error {
	cert, ca, err := testCert("api.allowed.test")
	if err != nil {
		return err
	}
	in.CA = ca
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		in.mu.Lock()
		in.allowed++
		in.mu.Unlock()
		_, _ = w.Write([]byte(AllowedBody))
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		to := r.URL.Query().Get("to")
		if to == "" {
			to = "http://other.test/"
		}
		http.Redirect(w, r, to, http.StatusFound)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(make([]byte, BigBytes))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // answers nothing until the client goes away or the server closes
	})
	type lsn struct {
		network, addr string
		serve         func(any)
	}
	web := func(tlsOn bool) func(any) {
		return func(l any) {
			ln := l.(net.Listener)
			if tlsOn {
				ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
			}
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			in.closers = append(in.closers, func() { srv.Close() })
			go func() { _ = srv.Serve(ln) }()
		}
	}
	var list []lsn
	list = append(list, lsn{"tcp4", AllowedIP + ":80", web(false)}, lsn{"tcp4", AllowedIP + ":443", web(true)})
	for _, c := range []struct{ name, addr string }{
		{"other", OtherIP + ":80"}, {"other", OtherIP + ":443"}, {"ten", TenIP + ":80"}, {"ten", TenIP + ":443"},
		{"metadata", MetadataIP + ":80"}, {"dot", DNSIP + ":853"},
	} {
		list = append(list, lsn{"tcp4", c.addr, in.tcpCanary(c.name)})
	}
	for _, c := range []struct{ name, addr string }{
		{"quic", AllowedIP + ":443"}, {"quic", OtherIP + ":443"}, {"udp", TenIP + ":53000"}, {"metadata", MetadataIP + ":123"},
	} {
		list = append(list, lsn{"udp4", c.addr, in.udpCanary(c.name)})
	}
	list = append(list, lsn{"udp4", AllowedIP + ":7", func(l any) {
		pc := l.(net.PacketConn)
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
			}
		}()
	}})
	dnsSrv := dns.HandlerFunc(in.answer)
	list = append(list,
		lsn{"udp4", DNSIP + ":53", func(l any) {
			s := &dns.Server{PacketConn: l.(net.PacketConn), Handler: dnsSrv}
			in.closers = append(in.closers, func() { _ = s.Shutdown() })
			go func() { _ = s.ActivateAndServe() }()
		}},
		lsn{"tcp4", DNSIP + ":53", func(l any) {
			s := &dns.Server{Listener: l.(net.Listener), Handler: dnsSrv}
			in.closers = append(in.closers, func() { _ = s.Shutdown() })
			go func() { _ = s.ActivateAndServe() }()
		}})
	var opened []any
	err = nsthread.Do(int(in.inet.Fd()), func() error {
		for _, l := range list {
			var x any
			var err error
			if strings.HasPrefix(l.network, "udp") {
				x, err = net.ListenPacket(l.network, l.addr)
			} else {
				x, err = net.Listen(l.network, l.addr)
			}
			if err != nil {
				return fmt.Errorf("fakenet listen %s %s: %w", l.network, l.addr, err)
			}
			opened = append(opened, x)
		}
		return nil
	})
	if err != nil {
		for _, x := range opened {
			x.(interface{ Close() error }).Close()
		}
		return err
	}
	for i, x := range opened {
		c := x.(interface{ Close() error })
		in.closers = append(in.closers, func() { c.Close() })
		list[i].serve(x)
	}
	// The daemon's own loopback: a tool that reached it through the proxy would be here.
	for _, a := range []string{"127.0.0.1:80", "127.0.0.1:443"} {
		ln, err := net.Listen("tcp4", a)
		if err != nil {
			return err
		}
		in.closers = append(in.closers, func() { ln.Close() })
		in.tcpCanary("loopback")(ln)
	}
	return nil
}

func (in *Internet) hit(name string) {
	in.mu.Lock()
	in.hits[name]++
	in.mu.Unlock()
}

func (in *Internet) tcpCanary(name string) func(any) {
	return func(l any) {
		ln := l.(net.Listener)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				in.hit(name)
				_, _ = c.Write([]byte("HTTP/1.0 200 OK\r\n\r\ncanary " + name))
				c.Close()
			}
		}()
	}
}

func (in *Internet) udpCanary(name string) func(any) {
	return func(l any) {
		pc := l.(net.PacketConn)
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				in.hit(name)
				_, _ = pc.WriteTo([]byte("canary "+name), from)
			}
		}()
	}
}

func (in *Internet) answer(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	for _, q := range r.Question {
		name := strings.ToLower(q.Name)
		in.mu.Lock()
		in.queries = append(in.queries, name+" "+dns.TypeToString[q.Qtype])
		in.mu.Unlock()
		ip, ok := records[name]
		if !ok && strings.HasSuffix(name, ".evil.test.") {
			ip, ok = OtherIP, true
		}
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip).To4()})
		case q.Qtype == dns.TypeTXT:
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{"exfiltrated"}})
		}
	}
	_ = w.WriteMsg(m)
}

// Hits returns the canaries' counts by name (empty: nothing reached any).
func (in *Internet) Hits() map[string]int {
	in.mu.Lock()
	defer in.mu.Unlock()
	m := map[string]int{}
	for k, v := range in.hits {
		m[k] = v
	}
	return m
}

// Queries returns what the DNS server was asked, in order ("name. TYPE").
func (in *Internet) Queries() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.queries...)
}

// QueriedOutside returns the names the DNS server was asked that are not under one of allowed
// (names, with or without the trailing dot), sorted.
func (in *Internet) QueriedOutside(allowed ...string) []string {
	var out []string
	for _, q := range in.Queries() {
		name, _, _ := strings.Cut(q, " ")
		ok := false
		for _, a := range allowed {
			if name == strings.TrimSuffix(a, ".")+"." {
				ok = true
			}
		}
		if !ok {
			out = append(out, q)
		}
	}
	sort.Strings(out)
	return out
}

// AllowedServed counts the requests api.allowed.test answered.
func (in *Internet) AllowedServed() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.allowed
}

// Close stops the servers and removes the internet's namespace and uplink.
func (in *Internet) Close() {
	for i := len(in.closers) - 1; i >= 0; i-- {
		in.closers[i]()
	}
	in.closers = nil
	if l, err := netlink.LinkByName("fiup"); err == nil {
		_ = netlink.LinkDel(l)
	}
}

// PublicPrefixes are the fake internet's public ranges.
func PublicPrefixes() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("198.51.100.0/24")}
}

// testCert returns a certificate for name signed by a fresh CA, and the CA's PEM.
func testCert(name string) (tls.Certificate, string, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fakenet test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	ca := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca, nil
}

// Wait waits until f is true or d passed.
func Wait(ctx context.Context, d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
