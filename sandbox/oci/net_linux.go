package oci

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/sandbox"
)

// Per-call networks. A call whose tool has a network policy runs in a network namespace taken
// from the sandbox's callnet pool when its container is created (cold, or by a warm pool's
// filler): a pre-created container cannot change namespace later, and making one on the call
// path costs a veth pair, addresses and routes (see BenchmarkNetns). The policy itself is bound
// to the namespace's address in the gate right before the container starts and released when the
// call returns, so a warm pool serves its tool's policy, and namespaces recycled from one tool's
// calls serve another's with nothing of the first left (callnet checks them). The pool is made
// on the first such call; its nftables table is named after the sandbox's owner directory, so
// the owner's keeper or the next start's reap removes it with the owner's containers.

const netDir = ".net"

// netUnavailable says why calls with a network policy cannot run here ("" when they can).
func (s *Sandbox) netUnavailable() string {
	switch {
	case s.cfg.Gate == nil:
		return "no egress gate is configured for the Oci tier"
	case s.rootless:
		return "per-call networks need root (a veth pair and nftables rules per call in the host's network namespace); rootless, tools with a network policy are refused"
	case s.owner == nil:
		return "the state root is unusable"
	case s.cfg.Backend == BackendRunc:
		// Seen with runc 1.1: it joins the container's user namespace before the prepared
		// network namespace, which then refuses it (EPERM). crun and libcontainer join first.
		return "the runc backend cannot join a prepared network namespace from a container's user namespace (use the embedded libcontainer or crun)"
	}
	return s.net.Available()
}

// SupportsEgress implements sandbox.EgressSupporter.
func (s *Sandbox) SupportsEgress() string { return s.netUnavailable() }

// network returns the sandbox's pool of per-call namespaces, making it on first use.
func (s *Sandbox) network() (*callnet.Pool, error) {
	p, err := s.net.Get(func() (*callnet.Pool, error) {
		if why := s.netUnavailable(); why != "" {
			return nil, &isolation.Error{Kind: isolation.ErrTierUnavailable,
				Message: "the tool has a network policy and this Oci tier cannot enforce one: " + why + " (fix: run the daemon as root on a Linux host with nftables and veth; tools without a network policy are unaffected)"}
		}
		p, err := callnet.New(callnet.Config{Table: callnet.TablePrefix + s.owner.tag, Prefix: s.cfg.NetPrefix,
			RunDir: filepath.Join(s.ioRoot, netDir, s.owner.tag), Ready: s.cfg.NetReady, Max: s.cfg.NetMax, Gate: s.cfg.Gate}, s.log)
		if err != nil {
			return nil, &isolation.Error{Kind: isolation.ErrTierUnavailable, Message: fmt.Sprintf("the tool has a network policy and no per-call network could be set up: %v", err)}
		}
		return p, nil
	})
	if errors.Is(err, callnet.ErrClosed) {
		return nil, errors.New("oci: sandbox is closed")
	}
	return p, err
}

// takeNetns returns a prepared namespace for a call with a network policy, nil for one without.
func (s *Sandbox) takeNetns(ctx context.Context, call sandbox.Call) (*callnet.NS, error) {
	if call.Limits.Egress.IsZero() {
		return nil, nil
	}
	p, err := s.network()
	if err != nil {
		return nil, err
	}
	ns, err := p.Get(ctx)
	if err != nil {
		return nil, &isolation.Error{Kind: isolation.ErrBusy, Message: fmt.Sprintf("no network namespace for the call: %v", err)}
	}
	return ns, nil
}

// returnNetns gives a container's namespace back once the container is gone (recycled when
// clean), or discards it when the container could not be destroyed.
func (s *Sandbox) returnNetns(c *ctr, destroyed bool) {
	if c.ns == nil {
		return
	}
	p := s.net.Made()
	if destroyed {
		p.Put(c.ns)
	} else {
		p.Discard(c.ns)
	}
	c.ns = nil
}

// hasResolvConf reports whether a rootfs has a regular /etc/resolv.conf to mount over (a
// read-only rootfs cannot get one; a symlink would be resolved inside it to where nothing may
// exist).
func hasResolvConf(root string) bool {
	fi, err := os.Lstat(filepath.Join(root, "etc", "resolv.conf"))
	return err == nil && fi.Mode().IsRegular()
}

// closeNet closes the pool of namespaces: its table and the gate's listeners go. Every container
// was destroyed first.
func (s *Sandbox) closeNet() {
	if err := s.net.Close(); err != nil {
		s.log.Warn("close per-call networks", "error", err)
	}
}

// reapNet removes what an owner's per-call networks left: its table and resolv.conf files (its
// namespaces and veth pairs went with its processes).
func reapNet(stateRoot, owner string) error {
	err := callnet.ReapTable(callnet.TablePrefix + owner)
	_ = os.RemoveAll(filepath.Join(stateRoot, netDir, owner))
	return err
}

// netWait bounds how long a call waits for a namespace when all NetMax are in use.
const netWait = 2 * time.Second
