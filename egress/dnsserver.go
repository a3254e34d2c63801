package egress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// DNS server limits: a TCP client gets this long per message and this many queries per
// connection, and at most maxDNSConns TCP connections are open at once.
const (
	dnsIOTimeout     = 2 * time.Second
	dnsMaxTCPQueries = 16
	maxDNSConns      = 256
	// maxAnswerTTL caps the TTL handed to containers: a call is short, and an address that
	// leaves the allowed set should not linger in its cache.
	maxAnswerTTL = 60
)

// ServeDNS answers the containers' DNS (redirected here by nftables) on pc (UDP) and ln (TCP);
// either may be nil. It returns when ctx ends (closing both) or a server fails.
//
// A query is answered only when its source is bound, it is one question of class IN and type A,
// AAAA or CNAME, and a name pattern of the source's policy matches the name (any port). The
// answer is the upstream resolver's, fetched with a question built here, without the addresses
// of the deny set. Everything else is REFUSED and never sent upstream.
func (g *Gate) ServeDNS(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	if pc == nil && ln == nil {
		return errors.New("egress: ServeDNS needs a PacketConn or a Listener")
	}
	h := dns.HandlerFunc(g.answerDNS)
	var servers []*dns.Server
	if pc != nil {
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: h, UDPSize: udpSize,
			ReadTimeout: dnsIOTimeout, WriteTimeout: dnsIOTimeout})
	}
	if ln != nil {
		servers = append(servers, &dns.Server{Listener: &limitListener{Listener: ln, sem: make(chan struct{}, maxDNSConns)},
			Handler: h, ReadTimeout: dnsIOTimeout, WriteTimeout: dnsIOTimeout,
			IdleTimeout: func() time.Duration { return dnsIOTimeout }, MaxTCPQueries: dnsMaxTCPQueries})
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.ActivateAndServe() }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, s := range servers {
		s.Shutdown() //nolint:errcheck // shutting down either way
	}
	if pc != nil {
		pc.Close()
	}
	if ln != nil {
		ln.Close()
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// answerDNS answers one query. Untrusted bytes: miekg/dns has parsed the message; everything
// else about it is checked here.
func (g *Gate) answerDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := g.dnsReply(context.Background(), addrOf(w.RemoteAddr()), r, isTCP(w))
	w.WriteMsg(m) //nolint:errcheck // nothing to do for a client that went away
}

// dnsReply builds the reply to r from src.
func (g *Gate) dnsReply(ctx context.Context, src netip.Addr, r *dns.Msg, tcp bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	size := 512
	if opt := r.IsEdns0(); opt != nil {
		size = max(512, min(int(opt.UDPSize()), udpSize))
		m.SetEdns0(udpSize, false)
	}
	refuse := func(name, reason string, b *binding) *dns.Msg {
		g.refused.Add(1)
		callID := ""
		if b != nil {
			callID = b.callID
		}
		g.log.Info("egress DNS refused", "call_id", callID, "src", src, "name", name, "reason", reason)
		m.Rcode = dns.RcodeRefused
		m.Answer, m.Ns, m.Extra = nil, nil, nil
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(udpSize, false)
		}
		return m
	}
	b := g.binding(src)
	if b == nil {
		return refuse("", "no policy bound to this source", nil)
	}
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 || r.Response {
		return refuse("", "not one query", b)
	}
	q := r.Question[0]
	name := truncName(q.Name)
	if q.Qclass != dns.ClassINET {
		return refuse(name, "class is not IN", b)
	}
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA, dns.TypeCNAME:
	default:
		return refuse(name, "type "+dns.TypeToString[q.Qtype]+" (only A, AAAA and CNAME are answered)", b)
	}
	n, ok := normalizeName(q.Name)
	if !ok || !b.policy.allowsNameAnyPort(n) {
		return refuse(name, "name not allowed by the call's policy", b)
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(b.ctx, cancel)
	defer stop()
	defer cancel()
	up, err := g.res.exchange(ctx, n, q.Qtype)
	if err != nil {
		g.log.Info("egress DNS upstream failed", "call_id", b.callID, "name", n, "err", err)
		m.Rcode = dns.RcodeServerFailure
		return m
	}
	switch up.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		m.Rcode = up.Rcode
	default:
		m.Rcode = dns.RcodeServerFailure
	}
	for _, rr := range up.Answer {
		h := rr.Header()
		h.Ttl = min(h.Ttl, maxAnswerTTL)
		switch v := rr.(type) {
		case *dns.CNAME:
			m.Answer = append(m.Answer, v)
		case *dns.A:
			if a, ok := netip.AddrFromSlice(v.A); ok && !g.deny.denied(a.Unmap()) {
				m.Answer = append(m.Answer, v)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(v.AAAA); ok && !g.deny.denied(a) {
				m.Answer = append(m.Answer, v)
			}
		}
	}
	g.answered.Add(1)
	if !tcp {
		m.Truncate(size)
	}
	return m
}

func truncName(s string) string {
	if len(s) > 255 {
		return s[:255]
	}
	return s
}

func isTCP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		x, _ := netip.AddrFromSlice(v.IP)
		return x.Unmap()
	case *net.TCPAddr:
		x, _ := netip.AddrFromSlice(v.IP)
		return x.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// limitListener bounds the connections open at once; more wait in the kernel's backlog.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
