package microvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/internal/guest"
	"github.com/axocoatl/isolation/sandbox"
)

// Per-call networks. A call whose tool has a network policy runs in a VM with a NIC: a virtio-net
// device backed by a tap in a network namespace of its own, from the sandbox's callnet pool (for
// VMs: the tap is joined to the namespace's veth at layer 2, and the guest takes the address a
// container would), behind the same host-side rules and egress gate as the Oci tier's
// containers. The guest configures the NIC from the request (address, route, resolver), and the
// policy is bound to the address in the gate for the exchange only. VMs without a policy get no
// NIC at all. A VM with a NIC is another shape (shape.net): pooled and snapshotted apart, each
// pooled one holding its namespace from its boot (a NIC cannot be hot-plugged on QEMU's microvm
// machine nor on Firecracker), and bound to a policy only when it serves a call.

// SupportsEgress implements sandbox.EgressSupporter.
func (s *Sandbox) SupportsEgress() string { return s.netUnavailable(context.Background()) }

// netUnavailable says why calls with a network policy cannot run here ("" when they can).
func (s *Sandbox) netUnavailable(ctx context.Context) string {
	if s.opts.Gate == nil {
		return "no egress gate is configured for the microVM tier"
	}
	if d, _, a := s.backend(ctx); a.Available {
		nd, ok := d.(NICDriver)
		if !ok {
			return d.Name() + " cannot give a VM a network device"
		}
		if why := nd.SupportsNIC(); why != "" {
			return why
		}
	}
	return s.net.Available()
}

// netTable is the nftables table of the per-call networks of the sandbox whose run dir is dir:
// named after it, so that whoever reaps the dir (the keeper, a later start) removes it too.
func netTable(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return callnet.TablePrefix + "vm-" + hex.EncodeToString(sum[:6])
}

// network returns the sandbox's pool of namespaces for VMs, making it on first use.
func (s *Sandbox) network(ctx context.Context) (*callnet.Pool, error) {
	p, err := s.net.Get(func() (*callnet.Pool, error) {
		if why := s.netUnavailable(ctx); why != "" {
			return nil, isolation.Errorf(isolation.ErrTierUnavailable,
				"the tool has a network policy and this microVM tier cannot enforce one: %s (fix: run the daemon as root on a Linux host with nftables, veth and tap devices; tools without a network policy are unaffected)", why)
		}
		p, err := callnet.New(callnet.Config{Table: netTable(s.runDir), Prefix: s.opts.NetPrefix, RunDir: s.runDir,
			Ready: s.opts.NetReady, Max: s.opts.NetMax, Gate: s.opts.Gate, ForVMs: true}, s.log)
		if err != nil {
			return nil, isolation.Errorf(isolation.ErrTierUnavailable, "the tool has a network policy and no per-call network could be set up: %v", err)
		}
		return p, nil
	})
	if errors.Is(err, callnet.ErrClosed) {
		return nil, errors.New("microvm: sandbox closed")
	}
	return p, err
}

// takeNetns returns a prepared namespace for a VM with a NIC.
func (s *Sandbox) takeNetns(ctx context.Context) (*callnet.NS, error) {
	p, err := s.network(ctx)
	if err != nil {
		return nil, err
	}
	wait, cancel := context.WithTimeout(ctx, netWait)
	defer cancel()
	ns, err := p.Get(wait)
	if err != nil {
		return nil, isolation.Errorf(isolation.ErrBusy, "no network namespace for the VM: %v", err)
	}
	return ns, nil
}

// returnNetns gives a VM's namespace back once its VMM is gone: recycled when clean (its tap
// went with the VMM), else destroyed.
func (s *Sandbox) returnNetns(ns *callnet.NS) {
	if ns == nil {
		return
	}
	if p := s.net.Made(); p != nil {
		p.Put(ns)
	}
}

// netConfig is the guest's network configuration in v's namespace: the container side's
// address, the host side as route and resolver (nil for a VM without a NIC).
func netConfig(v *vm) *guest.Net {
	if v.ns == nil {
		return nil
	}
	return &guest.Net{Addr: v.ns.Addr.String(), PrefixLen: 31, Gateway: v.ns.Peer.String(), DNS: v.ns.Peer.String()}
}

// bindNet binds the call's policy to v's address in the gate and returns the guest's network
// configuration and the release of the binding; for a VM without a NIC, nil and a no-op.
func (s *Sandbox) bindNet(v *vm, call sandbox.Call) (*guest.Net, func()) {
	if v.ns == nil {
		return nil, func() {}
	}
	return netConfig(v), v.ns.BindCall(s.opts.Gate, call.Limits.Egress, call.ID)
}

// closeNet closes the pool of namespaces (its table and the gate's listeners go); every VM was
// destroyed first.
func (s *Sandbox) closeNet() {
	if err := s.net.Close(); err != nil {
		s.log.Warn("close per-call networks", "error", err)
	}
}

// reapNet removes the table of a dead owner's per-call networks (its namespaces, veth pairs and
// taps went with its VMMs and descriptors).
func reapNet(dir string) {
	if os.Geteuid() == 0 {
		_ = callnet.ReapTable(netTable(dir))
	}
}

// netWait bounds how long a VM start waits for a namespace when all NetMax are in use.
const netWait = 2 * time.Second
