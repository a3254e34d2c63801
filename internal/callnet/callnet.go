// Package callnet gives a sandboxed call a network of its own that only reaches the daemon's egress
// gate: a network namespace connected to the host by a point-to-point veth pair (never a shared
// bridge), with nftables rules on the host side of the pair that send every TCP connection to the
// gate's transparent proxy and every DNS query to the gate's DNS server, and reject everything else.
//
// The rules live in the host's network namespace, in a table of the pool's own, and match the
// host-side interface by name: nothing a tool does inside its namespace can change them (the
// namespace belongs to the host's user namespace, so even a container's root has no
// CAP_NET_ADMIN over it). Per call, only the policy changes: the tier binds the container-side
// address to the call's policy in the gate (egress.Gate.Bind) when the call starts and releases it
// when it returns; the namespace itself is prepared ahead of time, off the call path, by a bounded
// pool, and recycled after the call when it is clean (no socket left, links and addresses intact)
// or destroyed.
//
// What one namespace looks like:
//
//   - inside: lo up; eth0 with the container address of a /31 taken from Config.Prefix, a default
//     route via the host side; IPv6 disabled on eth0 (::1 on lo stays); no TIME_WAIT sockets
//     (tcp_max_tw_buckets 0), so a recycled namespace shows the next tool nothing of the last one;
//   - host side: the other end of the pair, named with the pool's prefix, with the other address of
//     the /31, IPv6 disabled, strict reverse-path filtering;
//   - rules (table inet Config.Table): from the pool's interfaces, UDP and TCP port 53 are
//     redirected to the gate's DNS listeners, all other TCP except 853 (DNS over TLS) to the
//     gate's proxy; what was redirected is accepted, everything else arriving from them is
//     rejected at once (TCP reset or ICMP administratively prohibited: a tool fails fast instead
//     of hanging) and counted, nothing is forwarded to or from them, and the gate's ports take
//     nothing that did not come through a redirect.
//
// Nothing outlives the owner: namespaces are held only by this process's descriptors (and by the
// processes inside them), so when the owner and its sandboxes die the kernel removes them and
// their veth pairs; the table is removed by Pool.Close, by the owner's keeper, or by the next
// start's reap (ReapTable).
package callnet

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// Gate serves what the rules redirect: egress.Gate, or a stand-in in tests.
type Gate interface {
	// ServeTCP serves redirected TCP connections on ln until ctx ends.
	ServeTCP(ctx context.Context, ln net.Listener) error
	// ServeDNS serves DNS on pc (UDP) and ln (TCP) until ctx ends.
	ServeDNS(ctx context.Context, pc net.PacketConn, ln net.Listener) error
	// ServeUDP relays the UDP datagrams a call's grants redirect to pc (NS.AllowUDP) until ctx
	// ends; origDst returns a datagram's original destination.
	ServeUDP(ctx context.Context, pc net.PacketConn, origDst func(src netip.AddrPort) (netip.AddrPort, error)) error
}

// Defaults.
const (
	// DefaultPrefix is where namespaces take their /31s from: link-local, which the egress deny
	// set refuses as a destination, so no tool can reach another's namespace through the proxy,
	// and which hosts rarely route (169.254.169.254 lies outside it).
	DefaultPrefix = "169.254.64.0/18"
	DefaultReady  = 2
	DefaultMax    = 256
	// TablePrefix starts the name of every table of this package's owners.
	TablePrefix = "axocoatl-"
)

// ErrUnavailable is returned (wrapped) where per-call networks cannot be made: not root, no
// nftables, no veth.
var ErrUnavailable = errors.New("per-call networks unavailable")

// Config configures a Pool.
type Config struct {
	// Table names the pool's nftables table (family inet); unique per owner: Pool.Close and
	// ReapTable delete it whole. Must start with TablePrefix.
	Table string
	// Prefix is the IPv4 range the pool takes a /31 per namespace from (default DefaultPrefix).
	// Blocks are exclusive host-wide (a lock per block that dies with its holder), so pools of
	// several processes may share a range.
	Prefix netip.Prefix
	// RunDir holds each namespace's resolv.conf (created when missing).
	RunDir string
	// Ready is how many prepared namespaces the pool keeps (default DefaultReady); Max bounds the
	// namespaces that exist at once, ready or in use (default DefaultMax).
	Ready, Max int
	// Gate serves the redirected traffic: the pool opens its listeners and serves them until
	// Close.
	Gate Gate
	// ForVMs makes namespaces for VMs (see tap_linux.go): eth0 without an address or route, a
	// tap per VM (NS.OpenTap, NS.MakeTap) joined to it at layer 2, the guest taking NS.Addr; no
	// resolv.conf (the guest gets its resolver with the call). The host side is the same.
	ForVMs bool
}

// Stats counts what the pool did (for tests and logs).
type Stats struct {
	Created, Recycled, Destroyed, Ready, InUse int
}
