package egress

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// resolver asks the upstream DNS server, with a bounded number of exchanges in flight and a
// small bounded cache of the proxy's and the dialer's address lookups (answers to containers are
// fetched afresh; every address is checked against the deny set at dial time, cached or not).
type resolver struct {
	server  string
	timeout time.Duration
	sem     chan struct{}

	mu    sync.Mutex // guards cache
	cache map[string]cachedAddrs
}

type cachedAddrs struct {
	addrs   []netip.Addr
	expires time.Time
}

const (
	maxCacheEntries = 4096
	maxCacheTTL     = 30 * time.Second
	// udpSize is the EDNS buffer size asked of upstream and offered to containers (the DNS flag
	// day's value: no IP fragmentation).
	udpSize = 1232
)

var errBusy = errors.New("too many DNS exchanges in flight")

func newResolver(server string, timeout time.Duration, inFlight int) *resolver {
	return &resolver{server: server, timeout: timeout, sem: make(chan struct{}, inFlight), cache: map[string]cachedAddrs{}}
}

// exchange asks upstream one question built here (never the container's own message: none of
// its EDNS options or flags go upstream), over UDP, then TCP when truncated.
func (r *resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	default:
		return nil, errBusy
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(udpSize, false)
	c := &dns.Client{Net: "udp", UDPSize: udpSize, Timeout: r.timeout}
	in, _, err := c.ExchangeContext(ctx, m, r.server)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, r.server)
	}
	if err != nil {
		return nil, err
	}
	if in.Id != m.Id || len(in.Question) != 1 || !strings.EqualFold(in.Question[0].Name, m.Question[0].Name) {
		return nil, errors.New("upstream answered another question")
	}
	return in, nil
}

// lookup returns name's A and AAAA addresses (IPv4 first).
func (r *resolver) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	r.mu.Lock()
	c, ok := r.cache[name]
	r.mu.Unlock()
	if ok && time.Now().Before(c.expires) && len(c.addrs) > 0 {
		return c.addrs, nil
	}
	type res struct {
		m   *dns.Msg
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := r.exchange(ctx, name, dns.TypeAAAA)
		ch <- res{m, err}
	}()
	m4, err4 := r.exchange(ctx, name, dns.TypeA)
	r6 := <-ch
	var out []netip.Addr
	ttl := maxCacheTTL
	for _, m := range []*dns.Msg{m4, r6.m} {
		if m == nil || m.Rcode != dns.RcodeSuccess {
			continue
		}
		out = append(out, addrsOf(m)...)
		for _, rr := range m.Answer {
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
	}
	if len(out) > 0 && ttl > 0 {
		r.remember(name, out, ttl)
	}
	if len(out) == 0 {
		switch {
		case err4 != nil:
			return nil, err4
		case r6.err != nil:
			return nil, r6.err
		}
		return nil, nil
	}
	return out, nil
}

func addrsOf(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(v.A); ok {
				out = append(out, a.Unmap())
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(v.AAAA); ok {
				out = append(out, a)
			}
		}
	}
	return out
}

// remember caches a lookup's addresses for ttl (at most maxCacheTTL), evicting when full.
func (r *resolver) remember(name string, addrs []netip.Addr, ttl time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= maxCacheEntries {
		now := time.Now()
		for k, v := range r.cache {
			if now.After(v.expires) || len(r.cache) >= maxCacheEntries {
				delete(r.cache, k)
			}
		}
	}
	r.cache[name] = cachedAddrs{addrs: addrs, expires: time.Now().Add(ttl)}
}
