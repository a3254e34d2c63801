// Package oci is the Oci tier: each call runs in a fresh Linux container made from an OCI bundle
// (a ContainerImage tool's folder) or, for Python, Shell and Arbitrary tools, from a spec
// generated over a runtime root filesystem (Config.RuntimeRoot) or the tool's base bundle.
//
// The default backend is runc's libcontainer, embedded: it re-executes the running binary as
// each container's init, which this package's import of internal/containerinit arranges for any
// binary that links it. The "crun" and "runc" backends drive an installed runtime instead.
// Whatever a bundle's config.json says, only its args, env, cwd, user and root path are used:
// every container gets the same isolation, listed in README.md ("What a tool sees"); RATIONALE.md
// says why and what each part costs.
//
// Nothing is loosenable, the network included: a call whose tool has a network policy
// (sandbox.Limits.Egress) joins a prepared network namespace of its own whose traffic goes only to
// Config.Gate (TCP through its proxy, DNS to its resolver); every other call gets loopback only.
//
// As root every limit applies. Rootless (euid ≠ 0), where the kernel lets the user create a user
// namespace, a container maps only the caller's id and, with the default cgroupfs driver, gets no
// memory, pids or CPU limit; Probe's Backend says which case applies.
//
// New fails only on an invalid Config: a state root that cannot be created or locked leaves a
// Sandbox whose Probe says why and how to fix it.
package oci

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/axocoatl/isolation/egress"

	"github.com/axocoatl/isolation/sandbox/oci/internal/ocispec"
)

// Backend names.
const (
	BackendLibcontainer = "libcontainer"
	BackendCrun         = "crun"
	BackendRunc         = "runc"
)

// Defaults of Config.
const (
	DefaultStateRoot    = "/run/axocoatl/oci"
	DefaultBundleRoot   = "/var/axocoatl/bundles"
	DefaultCgroupParent = "axocoatl"
	DefaultMemoryMB     = ocispec.DefaultMemoryMB
	DefaultPids         = ocispec.DefaultPids
	DefaultCPUs         = ocispec.DefaultCPUs
	DefaultNofile       = ocispec.DefaultNofile
	DefaultTmpSizeMB    = ocispec.DefaultTmpSizeMB
	DefaultIOSizeMB     = 4
	DefaultPoolSize     = 2
	DefaultPoolIdle     = 5 * time.Minute
	// DefaultPoolMaxTotal and DefaultPoolMaxMemoryMB bound the warm containers of all pools
	// together: 32 idle containers (each a cgroup set, an init process and its mounts) or
	// 2048 MB of their memory limits, whichever is reached first.
	DefaultPoolMaxTotal    = 32
	DefaultPoolMaxMemoryMB = 2048
	// DefaultIDUser owns the id ranges of the containers' user namespaces (see Config.IDUser).
	DefaultIDUser = "axocoatl"
	// DefaultIDSlots is the default number of id slots (see Config.IDSlots).
	DefaultIDSlots = 1024
)

// Config configures a Sandbox. New copies it; zero fields take the documented defaults.
type Config struct {
	// StateRoot holds per-call I/O dirs ({StateRoot}/{id}/) and runtime state. Default
	// /run/axocoatl/oci for root; $XDG_RUNTIME_DIR/axocoatl/oci (else a directory under the
	// user's cache dir) for an unprivileged user. Several sandboxes (and processes) may share
	// it: each claims its containers under StateRoot/.owners/, and its keeper reaps them if its
	// process dies; New and ReapDead reap what dead owners whose keepers died too left there, and
	// everything there when no live Sandbox uses the root.
	StateRoot string
	// BundleRoot is the tools root: a call's Dir must be inside it. Default /var/axocoatl/bundles.
	BundleRoot string
	// UseSystemd selects libcontainer's systemd cgroup driver (default: cgroupfs).
	UseSystemd bool
	// Backend is "libcontainer" (embedded, the default), "crun" or "runc" (installed binaries).
	Backend string
	// RuntimeBinary is the crun/runc executable (default: looked up in PATH by Backend's name).
	RuntimeBinary string
	// RuntimeRoot is a root filesystem with /bin/sh and python3. When set, Python, Shell and
	// Arbitrary tools run on it (read-only) with their folder at /axocoatl/tool; when empty only
	// ContainerImage tools are supported.
	RuntimeRoot string
	// CgroupParent is the cgroup under which containers are created. Default "axocoatl".
	CgroupParent string
	// MemoryMB is the default memory limit (a call's Limits.MemoryMB wins). Default 256.
	MemoryMB int
	// Pids is the pids limit. Default 128.
	Pids int64
	// CPUs is the CPU quota in CPUs. Default 1.0.
	CPUs float64
	// Nofile is RLIMIT_NOFILE. Default 1024.
	Nofile uint64
	// TmpSizeMB caps the tmpfs at /tmp. Default 64.
	TmpSizeMB int
	// IOSizeMB caps the I/O dir (/axocoatl), a tmpfs of its own per call, beyond the call's input:
	// what the tool can write there, output.json included. Default 4; never less than twice the
	// call's output cap. Rootless sandboxes cannot mount it: their I/O dir has no cap.
	IOSizeMB int
	// Gate is the egress gate of calls with a network policy (sandbox.Limits.Egress): each such
	// call runs in a network namespace of its own (pooled; see internal/callnet) whose only way
	// out is the gate, which applies the policy. nil, rootless, or a host without nftables or
	// veth: calls with a policy are refused (isolation.ErrTierUnavailable, saying why). Calls
	// without one get loopback only. The host's network is never shared.
	Gate *egress.Gate
	// NetPrefix is the IPv4 range of the per-call namespaces, a /31 each (default
	// callnet.DefaultPrefix, link-local, which the gate never dials). NetReady namespaces are
	// kept prepared (default 2), at most NetMax exist at once (default 256).
	NetPrefix netip.Prefix
	NetReady  int
	NetMax    int
	// NoSeccomp runs containers without the seccomp profile. Only for binaries built without
	// `-tags seccomp`; without it such a binary reports the tier unavailable.
	NoSeccomp bool
	// PoolSize is the number of pre-created containers Prepare keeps per tool (libcontainer
	// backend only). Default 2; negative disables pools.
	PoolSize int
	// PoolIdle is how long a pool may go unused before its containers are destroyed; the next
	// call runs cold and refills it. Default 5 minutes.
	PoolIdle time.Duration
	// PoolMaxTotal bounds the warm containers all pools hold together, PoolMaxMemoryMB the sum
	// of their memory limits. Each prepared tool's fair share is the budget divided by the
	// pools in use (at least one container while there is room); when the budget is full, the
	// least recently used pool gives up a container to a pool below its share. Calls a pool
	// cannot serve run cold. Defaults 32 and 2048; negative: no bound.
	PoolMaxTotal    int
	PoolMaxMemoryMB int
	// IDUser owns the host id ranges (/etc/subuid, /etc/subgid) from which every container run as
	// root gets a user namespace with a 65536-id slot of its own. When the files give it no range,
	// New (as root) creates the system user and registers IDSlots*65536 ids for it at the first
	// free 65536-aligned start at or above 2^30, in both files. Default "axocoatl".
	IDUser string
	// IDSlots bounds the containers (pooled, running or being torn down) that exist at once; a
	// container that finds none free fails with isolation.ErrBusy. Default 1024.
	IDSlots int
	// Logger receives the sandbox's logs; nil logs nowhere.
	Logger *slog.Logger

	// idOffset skips the first slots of IDUser's ranges (tests: a few slots of their own).
	idOffset int
	// noUserNS runs containers as root did before uid slots (benchmarks: what they cost).
	noUserNS bool
}

func (c Config) withDefaults() Config {
	if c.StateRoot == "" {
		c.StateRoot = DefaultStateRoot
	}
	if c.BundleRoot == "" {
		c.BundleRoot = DefaultBundleRoot
	}
	if c.Backend == "" {
		c.Backend = BackendLibcontainer
	}
	if c.CgroupParent == "" {
		c.CgroupParent = DefaultCgroupParent
	}
	if c.MemoryMB <= 0 {
		c.MemoryMB = DefaultMemoryMB
	}
	if c.Pids <= 0 {
		c.Pids = DefaultPids
	}
	if c.CPUs <= 0 {
		c.CPUs = DefaultCPUs
	}
	if c.Nofile == 0 {
		c.Nofile = DefaultNofile
	}
	if c.TmpSizeMB <= 0 {
		c.TmpSizeMB = DefaultTmpSizeMB
	}
	if c.IOSizeMB <= 0 {
		c.IOSizeMB = DefaultIOSizeMB
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	if c.PoolIdle <= 0 {
		c.PoolIdle = DefaultPoolIdle
	}
	if c.PoolMaxTotal == 0 {
		c.PoolMaxTotal = DefaultPoolMaxTotal
	}
	if c.PoolMaxMemoryMB == 0 {
		c.PoolMaxMemoryMB = DefaultPoolMaxMemoryMB
	}
	if c.IDUser == "" {
		c.IDUser = DefaultIDUser
	}
	if c.IDSlots <= 0 {
		c.IDSlots = DefaultIDSlots
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
