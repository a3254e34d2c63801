package callnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation/egress"
)

// UDP grants. A call's CIDR patterns that allow UDP ("203.0.113.0/24:443/udp", or without a
// proto) become rules of its own, for the time of the call: UDP from the call's link to that
// range and port is redirected to the gate's UDP relay (Gate.ServeUDP), which checks the policy
// and the deny set again and relays the flow from a socket of its own. Every other datagram is
// still rejected at once by the table's fixed rules; port 53 always goes to the DNS server (its
// redirect comes first). Nothing is routed: the host forwards no packet of a namespace.

// AllowUDP adds the redirects of rules' UDP grants for this namespace's link and returns their
// removal (recycling removes them too). Rules that allow only TCP are skipped.
func (n *NS) AllowUDP(rules []egress.CIDRRule) (release func(), err error) {
	var udp []egress.CIDRRule
	for _, r := range rules {
		if r.Proto != egress.ProtoTCP && r.Prefix.Addr().Is4() {
			udp = append(udp, r)
		}
	}
	if len(udp) == 0 {
		return func() {}, nil
	}
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: n.p.cfg.Table}
	pre := &nftables.Chain{Name: "prerouting", Table: t}
	for _, r := range udp {
		ex := []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameExact(n.Link)}}
		ex = append(ex, ipv4()...)
		ex = append(ex, l4(unix.IPPROTO_UDP)...)
		ex = append(ex, daddrIn(r.Prefix)...)
		if r.Port != 0 {
			ex = append(ex, dport(r.Port, expr.CmpOpEq)...)
		}
		ex = append(ex, redirect(n.p.ports.udpRelay)...)
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: ex, UserData: []byte(n.Link)})
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("callnet: UDP grants of %s: %w", n.Link, err)
	}
	return func() {
		if err := deleteTagged(n.p.cfg.Table, n.Link); err != nil {
			n.p.log.Warn("remove UDP grant rules", "link", n.Link, "error", err)
		}
	}, nil
}

// deleteTagged deletes the prerouting rules of table tagged (user data) with link.
func deleteTagged(table, link string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: table}
	rules, err := c.GetRules(t, &nftables.Chain{Name: "prerouting", Table: t})
	if err != nil {
		return err
	}
	n := 0
	for _, r := range rules {
		if string(r.UserData) == link {
			if err := c.DelRule(r); err != nil {
				return err
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return c.Flush()
}

// ifnameExact matches an interface name exactly (the kernel compares IFNAMSIZ bytes).
func ifnameExact(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// daddrIn matches an IPv4 destination inside p.
func daddrIn(p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	a := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

// udpOrigDst finds, in the kernel's connection tracking, where the datagram from src that was
// redirected to the relay's port was going.
func udpOrigDst(src netip.AddrPort, relayPort uint16) (netip.AddrPort, error) {
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		return netip.AddrPort{}, err
	}
	for _, f := range flows {
		if f.Forward.Protocol != unix.IPPROTO_UDP || f.Forward.SrcPort != src.Port() || f.Reverse.SrcPort != relayPort {
			continue
		}
		if a, ok := netip.AddrFromSlice(f.Forward.SrcIP); !ok || a.Unmap() != src.Addr() {
			continue
		}
		if d, ok := netip.AddrFromSlice(f.Forward.DstIP); ok {
			return netip.AddrPortFrom(d.Unmap(), f.Forward.DstPort), nil
		}
	}
	return netip.AddrPort{}, errors.New("no connection tracking entry")
}

// Binder binds a policy to a source address: egress.Gate.
type Binder interface {
	Bind(src netip.Addr, p egress.Policy, callID string) (release func())
}

// BindCall binds a call's policy to the namespace for the call: the gate applies it to the
// namespace's address, and its UDP grants get their redirects (AllowUDP). Redirects that cannot
// be added are logged and leave the call's UDP rejected, never wider than its policy. release
// undoes both.
func (n *NS) BindCall(g Binder, p egress.Policy, callID string) (release func()) {
	unbind := g.Bind(n.Addr, p, callID)
	allow, err := n.AllowUDP(p.CIDRs())
	if err != nil {
		n.p.log.Warn("UDP grants not applied: the call's UDP stays rejected", "call_id", callID, "link", n.Link, "error", err)
		allow = func() {}
	}
	return func() {
		allow()
		unbind()
	}
}
