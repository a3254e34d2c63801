package egress

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/axocoatl/isolation/internal/egresstest"
)

// denyPrefixes are never reached, whatever a policy says, unless the operator's allow_private
// reopens them: everything that is not the public internet. Each line says why.
var denyPrefixes = mustPrefixes(
	"0.0.0.0/8",       // "this network"; 0.0.0.0 reaches the host itself on Linux
	"10.0.0.0/8",      // RFC 1918
	"100.64.0.0/10",   // CGNAT (RFC 6598): a provider's internal network
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, where cloud metadata services live (169.254.169.254)
	"172.16.0.0/12",   // RFC 1918
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // TEST-NET-1 (documentation)
	"192.88.99.0/24",  // 6to4 relay anycast (deprecated)
	"192.168.0.0/16",  // RFC 1918
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // TEST-NET-2
	"203.0.113.0/24",  // TEST-NET-3
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
	"::/8",            // unspecified, ::1 loopback, IPv4-mapped ::ffff:0:0/96, IPv4-compatible
	"64:ff9b::/96",    // NAT64: reaches IPv4 addresses, private ones included
	"64:ff9b:1::/48",  // local-use NAT64
	"100::/64",        // discard
	"2001::/32",       // Teredo: embeds IPv4 addresses
	"2001:db8::/32",   // documentation
	"2002::/16",       // 6to4: embeds IPv4 addresses
	"fc00::/7",        // unique local (ULA)
	"fe80::/10",       // link-local
	"fec0::/10",       // site-local (deprecated)
	"ff00::/8",        // multicast
)

// testNetPrefixes are the documentation ranges the fake-internet tests use as "public" hosts
// when internal/egresstest marks them so.
var testNetPrefixes = mustPrefixes("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// DenyPrefixes returns the static deny set (a copy): the ranges no policy reaches unless the
// operator's allow_private reopens them. The host's own addresses are denied too (Gate.Denied).
func DenyPrefixes() []netip.Prefix { return slices.Clone(denyPrefixes) }

// inStaticDeny reports whether a is in the static deny set (IPv4-mapped addresses are judged by
// their IPv4 form and are denied as such too: nothing should dial ::ffff:a.b.c.d).
func inStaticDeny(a netip.Addr) bool {
	if !a.IsValid() || a.Zone() != "" {
		return true
	}
	if a.Is4In6() {
		return true
	}
	for _, p := range denyPrefixes {
		if p.Contains(a) {
			if egresstest.TestNetPublic() && containsAny(testNetPrefixes, a) {
				return false
			}
			return true
		}
	}
	return false
}

func containsAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// denyRule judges addresses: the static set, the host's own addresses, minus allow_private.
type denyRule struct {
	allowPrivate []netip.Prefix
	hostAddrs    *hostAddrs
}

// denied reports whether a may not be dialed.
func (d *denyRule) denied(a netip.Addr) bool {
	if !a.IsValid() {
		return true
	}
	if a.Is4In6() {
		// Never dial a mapped address, even to a reopened range: the IPv4 form is what to write.
		return true
	}
	if containsAny(d.allowPrivate, a) {
		return false
	}
	return inStaticDeny(a) || (d.hostAddrs != nil && d.hostAddrs.has(a))
}

// hostAddrs caches the host's interface addresses, refreshed at most every ttl. A container must
// not reach the daemon's host through one of its public addresses either.
type hostAddrs struct {
	ttl  time.Duration
	list func() ([]netip.Addr, error)

	mu      sync.Mutex // guards addrs, fetched
	addrs   map[netip.Addr]struct{}
	fetched time.Time
}

func newHostAddrs() *hostAddrs {
	return &hostAddrs{ttl: 5 * time.Second, list: interfaceAddrs}
}

func (h *hostAddrs) has(a netip.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.addrs == nil || time.Since(h.fetched) > h.ttl {
		if l, err := h.list(); err == nil || h.addrs == nil {
			m := make(map[netip.Addr]struct{}, len(l))
			for _, x := range l {
				m[x.Unmap()] = struct{}{}
			}
			h.addrs, h.fetched = m, time.Now()
		}
	}
	_, ok := h.addrs[a.WithZone("")]
	return ok
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if x, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, x.Unmap())
			}
		}
	}
	return out, nil
}
