package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/axocoatl/isolation/internal/egresstest"
)

// Policy is the effective allow-list of one call. The zero Policy allows nothing: the call gets
// no network at all. Policies are immutable and safe to share.
type Policy struct {
	names []Pattern // name patterns, sorted by String
	cidrs []Pattern // CIDR patterns, sorted by String
	key   string
}

// NewPolicy returns the policy allowing exactly ps (duplicates removed). It applies no grant:
// the executor builds policies with Effective; this is for tests and callers that already hold
// an effective list. The deny set still applies when it is enforced.
func NewPolicy(ps ...Pattern) Policy {
	var p Policy
	seen := map[Pattern]bool{}
	for _, x := range ps {
		if x == (Pattern{}) || seen[x] {
			continue
		}
		seen[x] = true
		if x.IsName() {
			p.names = append(p.names, x)
		} else {
			p.cidrs = append(p.cidrs, x)
		}
	}
	byString := func(a, b Pattern) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(p.names, byString)
	slices.SortFunc(p.cidrs, byString)
	var b strings.Builder
	for i, x := range p.Patterns() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(x.String())
	}
	p.key = b.String()
	return p
}

// IsZero reports whether the policy allows nothing (the call gets no network device).
func (p Policy) IsZero() bool { return len(p.names) == 0 && len(p.cidrs) == 0 }

// String lists the patterns in canonical form and order, space-separated: equal policies have
// equal strings (a key for pooling per policy).
func (p Policy) String() string { return p.key }

// Patterns returns the policy's patterns, names first.
func (p Policy) Patterns() []Pattern {
	return append(slices.Clone(p.names), p.cidrs...)
}

// Strings returns the patterns' canonical forms (for reports and JSON).
func (p Policy) Strings() []string {
	out := make([]string, 0, len(p.names)+len(p.cidrs))
	for _, x := range p.Patterns() {
		out = append(out, x.String())
	}
	return out
}

// HasNames reports whether the policy has name patterns (so the call needs DNS and the proxy).
func (p Policy) HasNames() bool { return len(p.names) > 0 }

// CIDRRule is a CIDR pattern, for plumbing that routes granted ranges directly.
type CIDRRule struct {
	Prefix netip.Prefix
	Port   uint16 // 0: any
	Proto  string // ProtoTCP, ProtoUDP or ProtoAny
}

// CIDRs returns the policy's CIDR patterns.
func (p Policy) CIDRs() []CIDRRule {
	out := make([]CIDRRule, len(p.cidrs))
	for i, x := range p.cidrs {
		out[i] = CIDRRule{Prefix: x.prefix, Port: x.port, Proto: x.proto}
	}
	return out
}

// AllowsName reports whether a name pattern allows name on TCP port. The name is compared
// case-insensitively, without a trailing dot; an IP literal never matches a name pattern.
func (p Policy) AllowsName(name string, port uint16) bool {
	name, ok := normalizeName(name)
	if !ok {
		return false
	}
	for _, x := range p.names {
		if x.port == port && x.matchName(name) {
			return true
		}
	}
	return false
}

// allowsNameAnyPort is the DNS server's question: may the source learn this name's addresses?
func (p Policy) allowsNameAnyPort(name string) bool {
	name, ok := normalizeName(name)
	if !ok {
		return false
	}
	for _, x := range p.names {
		if x.matchName(name) {
			return true
		}
	}
	return false
}

// AllowsAddr reports whether a CIDR pattern allows ap over proto (ProtoTCP or ProtoUDP). It does
// not apply the deny set (Gate does).
func (p Policy) AllowsAddr(ap netip.AddrPort, proto string) bool {
	for _, x := range p.cidrs {
		if x.matchAddr(ap, proto) {
			return true
		}
	}
	return false
}

// normalizeName lowercases and drops one trailing dot; it refuses IP literals and invalid names.
func normalizeName(name string) (string, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if checkName(name) != "" || looksNumeric(name) {
		return "", false
	}
	return name, true
}

// NotGranted is an asked pattern the call did not get (wholly or in part), and why.
type NotGranted struct {
	Pattern string `json:"pattern"`
	Reason  string `json:"reason"`
}

// Effective returns asked ∩ granted − denied, and what of asked it did not keep. An asked pattern
// is kept whole when one granted pattern covers it, narrowed to its intersections with the
// granted patterns when those only cover part of it (reported), and dropped (reported) when no
// granted pattern overlaps it. A CIDR pattern that lies wholly in the deny set, and is not
// reopened by allowPrivate, is dropped and reported: it could never be reached. Nothing is ever
// widened: the result allows a subset of what was asked and a subset of what was granted.
func Effective(asked, granted []Pattern, allowPrivate []netip.Prefix) (Policy, []NotGranted) {
	var keep []Pattern
	var ng []NotGranted
	seen := map[Pattern]bool{}
	for _, a := range asked {
		if a == (Pattern{}) || seen[a] {
			continue
		}
		seen[a] = true
		var parts []Pattern
		whole := false
		for _, g := range granted {
			if covers(g, a) {
				whole = true
				break
			}
			if r, ok := intersect(a, g); ok {
				parts = append(parts, r)
			}
		}
		if whole {
			parts = []Pattern{a}
		}
		var kept []string
		var denied bool
		for _, r := range parts {
			if !r.IsName() && whollyDenied(r.prefix, allowPrivate) {
				denied = true
				continue
			}
			keep = append(keep, r)
			kept = append(kept, r.String())
		}
		switch {
		case len(parts) == 0:
			ng = append(ng, NotGranted{a.String(), "not granted by the operator"})
		case denied && len(kept) == 0:
			ng = append(ng, NotGranted{a.String(), "private or reserved addresses (the deny set); only the operator's allow_private reopens them"})
		case !whole || denied:
			ng = append(ng, NotGranted{a.String(), fmt.Sprintf("narrowed to %s (what the operator grants)", strings.Join(kept, ", "))})
		}
	}
	return NewPolicy(keep...), ng
}

// whollyDenied reports whether every address of pfx is in the static deny set and none is
// reopened by allowPrivate.
func whollyDenied(pfx netip.Prefix, allowPrivate []netip.Prefix) bool {
	for _, ap := range allowPrivate {
		if ap.Overlaps(pfx) {
			return false
		}
	}
	if egresstest.TestNetPublic() {
		for _, t := range testNetPrefixes {
			if t.Overlaps(pfx) {
				return false
			}
		}
	}
	for _, d := range denyPrefixes {
		if d.Bits() <= pfx.Bits() && d.Contains(pfx.Addr()) {
			return true
		}
	}
	return false
}
