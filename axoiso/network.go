package axoiso

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/executor"
)

// EgressConfig configures the egress gate every call with a network policy goes through (see
// the README's Network section).
type EgressConfig struct {
	// Resolver is the upstream DNS server of allowed names, "host:port" (default: the first
	// nameserver of /etc/resolv.conf).
	Resolver string `json:"resolver,omitempty"`
	// AllowPrivate reopens these ranges (CIDRs) of the deny set (loopback, RFC 1918, CGNAT,
	// link-local, ...): the only way anything in them can be granted.
	AllowPrivate []string `json:"allow_private,omitempty"`
	// NetPrefix is the IPv4 range the network namespaces of Oci calls and microVM calls take a
	// /31 each from (default 169.254.64.0/18).
	NetPrefix string `json:"net_prefix,omitempty"`
	// AllTools and Tools are the operator's grants (egress patterns): to every tool, and per tool
	// name. A call gets what its tool.json asks for ∩ these, minus the deny set.
	AllTools []string            `json:"all_tools,omitempty"`
	Tools    map[string][]string `json:"tools,omitempty"`
}

// egressGrants parses the grants of c for the executor.
func egressGrants(c Config) (executor.EgressGrants, error) {
	var g executor.EgressGrants
	var err error
	if g.AllTools, err = egress.ParsePatterns(c.Egress.AllTools); err != nil {
		return g, fmt.Errorf("config egress.all_tools: %w", err)
	}
	for name, ss := range c.Egress.Tools {
		ps, err := egress.ParsePatterns(ss)
		if err != nil {
			return g, fmt.Errorf("config egress.tools.%s: %w", name, err)
		}
		if g.Tools == nil {
			g.Tools = map[string][]egress.Pattern{}
		}
		g.Tools[name] = ps
	}
	for _, s := range c.Egress.AllowPrivate {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return g, fmt.Errorf("config egress.allow_private %q: %w", s, err)
		}
		g.AllowPrivate = append(g.AllowPrivate, p)
	}
	return g, nil
}

// gates holds one egress gate per configuration for the process: the tiers of one executor share it.
var gates struct {
	sync.Mutex
	m map[string]*egress.Gate
}

// egressGate returns the process's gate for c (made on first use).
func egressGate(c Config, log *slog.Logger) (*egress.Gate, error) {
	var allow []netip.Prefix
	for _, s := range c.Egress.AllowPrivate {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("config egress.allow_private %q: %w", s, err)
		}
		allow = append(allow, p)
	}
	key := fmt.Sprint(c.Egress.Resolver, allow)
	gates.Lock()
	defer gates.Unlock()
	if g := gates.m[key]; g != nil {
		return g, nil
	}
	g, err := egress.NewGate(egress.GateConfig{Resolver: c.Egress.Resolver, AllowPrivate: allow, Logger: log}) // the gate adds component=egress
	if err != nil {
		return nil, err
	}
	if gates.m == nil {
		gates.m = map[string]*egress.Gate{}
	}
	gates.m[key] = g
	return g, nil
}

// netPrefix is c's per-call network range (the zero Prefix: the default).
func netPrefix(c Config) (netip.Prefix, error) {
	if c.Egress.NetPrefix == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(c.Egress.NetPrefix)
	if err != nil {
		return p, fmt.Errorf("config egress.net_prefix %q: %w", c.Egress.NetPrefix, err)
	}
	return p, nil
}

// tierEgress returns the gate and per-call network range a tier gets from c. A gate that cannot
// be made is no error: the tier then refuses tools with a network policy, saying why, and runs the
// others.
func tierEgress(c Config, log *slog.Logger) (*egress.Gate, netip.Prefix, error) {
	prefix, err := netPrefix(c)
	if err != nil {
		return nil, prefix, err
	}
	gate, err := egressGate(c, log)
	if err != nil {
		log.Warn("no egress gate: tools with a network policy are refused", "error", err)
		return nil, prefix, nil
	}
	return gate, prefix, nil
}
