package callnet

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ports are where the rules redirect to: the gate's listeners in the host namespace.
type ports struct{ proxy, dnsUDP, dnsTCP, udpRelay uint16 }

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits: set on a redirected connection.
const ipsDstNAT = 1 << 5

// ruleset returns the table's chains and rules for links whose names start with ifPrefix.
// Expressions are what `nft` itself generates for the same rules (see the package comment for
// what they do); `nft list table inet NAME` shows them.
func installTable(name, ifPrefix string, p ports) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	// Right after the redirects (dstnat + 10), before routing: with forwarding off, the kernel
	// drops what it would forward before the forward hook, silently, and a tool would hang
	// instead of being refused.
	filt := c.AddChain(&nftables.Chain{Name: "from-namespaces", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest + 10), Policy: &accept})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fromUs := ifname(expr.MetaKeyIIFNAME, ifPrefix, expr.CmpOpEq)
	notFromUs := ifname(expr.MetaKeyIIFNAME, ifPrefix, expr.CmpOpNeq)
	toUs := ifname(expr.MetaKeyOIFNAME, ifPrefix, expr.CmpOpEq)
	rules := []struct {
		ch *nftables.Chain
		ex [][]expr.Any
	}{
		// DNS, then every other TCP connection but DNS over TLS, to the gate. IPv4 only: the
		// namespaces have no IPv6 on eth0, and IPv6 arriving anyway is rejected below.
		{pre, [][]expr.Any{fromUs, ipv4(), l4(unix.IPPROTO_UDP), dport(53, expr.CmpOpEq), redirect(p.dnsUDP)}},
		{pre, [][]expr.Any{fromUs, ipv4(), l4(unix.IPPROTO_TCP), dport(53, expr.CmpOpEq), redirect(p.dnsTCP)}},
		{pre, [][]expr.Any{fromUs, ipv4(), l4(unix.IPPROTO_TCP), dport(853, expr.CmpOpNeq), redirect(p.proxy)}},
		// What was redirected reaches the gate; nothing else from a namespace reaches the host.
		{filt, [][]expr.Any{fromUs, ctDNAT(), {&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}}},
		{filt, [][]expr.Any{fromUs, l4(unix.IPPROTO_TCP), rejectTCP()}},
		{filt, [][]expr.Any{fromUs, rejectOther()}},
		// The gate's ports take only redirected traffic from the namespaces.
		{in, [][]expr.Any{notFromUs, l4(unix.IPPROTO_TCP), dport(p.proxy, expr.CmpOpEq), rejectTCP()}},
		{in, [][]expr.Any{notFromUs, l4(unix.IPPROTO_TCP), dport(p.dnsTCP, expr.CmpOpEq), rejectTCP()}},
		{in, [][]expr.Any{notFromUs, l4(unix.IPPROTO_UDP), dport(p.dnsUDP, expr.CmpOpEq), rejectOther()}},
		{in, [][]expr.Any{notFromUs, l4(unix.IPPROTO_UDP), dport(p.udpRelay, expr.CmpOpEq), rejectOther()}},
		// Nothing is routed into a namespace (what would be routed out of one was rejected above).
		{fwd, [][]expr.Any{toUs, {&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}}},
		// No host process opens a connection into a namespace.
		{out, [][]expr.Any{toUs, ctNew(), {&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}}},
	}
	for _, r := range rules {
		var ex []expr.Any
		for _, e := range r.ex {
			ex = append(ex, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: r.ch, Exprs: ex})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table inet %s: %w", name, err)
	}
	return nil
}

// deleteTable removes table inet name; a table that does not exist is no error.
func deleteTable(name string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	if _, err := c.ListTableOfFamily(name, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table inet %s: %w", name, err)
	}
	return nil
}

// listTables returns the names of the inet tables that start with prefix.
func listTables(prefix string) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range ts {
		if strings.HasPrefix(t.Name, prefix) {
			out = append(out, t.Name)
		}
	}
	return out, nil
}

// ifname matches an interface name that starts with prefix (nft's `iifname "prefix*"`).
func ifname(key expr.MetaKey, prefix string, op expr.CmpOp) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: []byte(prefix)}}
}

func ipv4() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}
}

func l4(proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}}}
}

func dport(port uint16, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func redirect(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	}
}

func ctDNAT() []expr.Any {
	return ctBits(expr.CtKeySTATUS, ipsDstNAT)
}

func ctNew() []expr.Any {
	return ctBits(expr.CtKeySTATE, expr.CtStateBitNEW)
}

func ctBits(key expr.CtKey, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func rejectTCP() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
}

func rejectOther() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
}
