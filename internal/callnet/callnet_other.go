//go:build !linux

package callnet

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/axocoatl/isolation/egress"
)

const unavailable = "per-call networks need Linux (network namespaces, veth, nftables)"

// Available reports why per-call networks cannot be made on this host.
func Available() string { return unavailable }

// ReapTable does nothing off Linux.
func ReapTable(string) error { return nil }

// Pool is never made off Linux: New fails.
type Pool struct{}

// NS is a prepared namespace (none exist off Linux).
type NS struct {
	Addr, Peer netip.Addr
	Link       string
	ResolvConf string
}

// TapName is the name of a VM namespace's tap device.
const TapName = "tap0"

// New fails off Linux.
func New(Config, *slog.Logger) (*Pool, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, unavailable)
}

func (p *Pool) Get(context.Context) (*NS, error) { return nil, ErrUnavailable }
func (p *Pool) Put(*NS)                          {}
func (p *Pool) Discard(*NS)                      {}
func (p *Pool) Close() error                     { return nil }
func (p *Pool) Stats() Stats                     { return Stats{} }
func (p *Pool) LinkPrefix() string               { return "" }
func (p *Pool) Table() string                    { return "" }
func (n *NS) Path() string                       { return "" }
func (n *NS) OpenTap() (*os.File, error)         { return nil, ErrUnavailable }
func (n *NS) MakeTap(uid, gid int) error         { return ErrUnavailable }
func (n *NS) AllowUDP([]egress.CIDRRule) (func(), error) {
	return nil, ErrUnavailable
}

// Binder binds a policy to a source address: egress.Gate.
type Binder interface {
	Bind(src netip.Addr, p egress.Policy, callID string) (release func())
}

// BindCall binds the call's policy in g (no namespace exists off Linux).
func (n *NS) BindCall(g Binder, p egress.Policy, callID string) func() {
	return g.Bind(n.Addr, p, callID)
}
