// Package ocispec builds the OCI runtime spec every Oci-tier call runs with: the isolation
// defaults applied over a bundle's config.json, or a spec generated for a script or executable
// tool that runs on a shared runtime root filesystem.
//
// The policy is "build fresh, copy little": a bundle's config.json contributes only its process
// (args, env, cwd, uid/gid) and its root path. Everything a bundle could use to weaken
// isolation or reach the host — hooks, mounts, devices, namespace paths, id mappings, sysctls,
// capabilities, seccomp, AppArmor/SELinux labels, resources, the hostname — is ignored and
// replaced by the defaults below (the hostname is Config.Hostname: the sandbox uses the same
// constant for every container, which tells a tool nothing about the host, the bundle or the call). Nothing is loosenable: a call with a network policy joins a prepared namespace (Config.NetNS) instead of a fresh one.
package ocispec

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Defaults.
const (
	DefaultMemoryMB  = 256
	DefaultPids      = 128
	DefaultCPUs      = 1.0
	DefaultNofile    = 1024
	DefaultTmpSizeMB = 64
	cpuPeriod        = 100000
	defaultPath      = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	guestDir         = "/axocoatl"
	guestToolDir     = "/axocoatl/tool"
	guestInput       = "/axocoatl/input.json"
	UnprivilegedID   = 65534
	ociVersion       = "1.0.2" // crun 1.8 refuses newer versions; 1.0.2 has everything used here
	maxArgBytes      = 64 << 10
	// MaxMemoryMB (1 TiB, = sandbox.MaxMemoryMB) and MaxCPUs bound what Config can ask for, so
	// that converting them to bytes and quota microseconds never overflows int64: 2^44 MB shifted
	// to bytes wraps to 0, which runtimes read as "no limit"; 2^43 MB wraps negative.
	MaxMemoryMB = 1 << 20
	MaxCPUs     = 1024
)

// Config is the per-call settings applied by Harden and Generate.
type Config struct {
	// Hostname inside the container (the UTS namespace is always private).
	Hostname string
	// CgroupsPath is the container's cgroup path ("/axocoatl/<id>" with the cgroupfs driver).
	CgroupsPath string
	// IODir is the host directory bind-mounted at /axocoatl; IODir/input.json is bound over
	// itself read-only.
	IODir string
	// MemoryMB (default 256, at most MaxMemoryMB), Pids (default 128), CPUs (default 1.0, at most
	// MaxCPUs), Nofile (default 1024), TmpSizeMB (default 64) bound the container.
	MemoryMB  int
	Pids      int64
	CPUs      float64
	Nofile    uint64
	TmpSizeMB int
	// Swap is true when the host accounts swap (cgroup v1 memory.memsw.*, v2 memory.swap.max):
	// swap is then limited to nothing beyond the memory limit.
	Swap bool
	// NetNS, when set, is the network namespace to join (a per-call namespace whose only way
	// out is the daemon's egress gate, see internal/callnet) instead of a fresh one with
	// loopback only. The host's network namespace is never shared.
	NetNS string
	// ResolvConf, with NetNS, is a host file bound read-only over the rootfs's /etc/resolv.conf
	// (which must exist as a regular file: the rootfs is read-only).
	ResolvConf string
	// Rootless adds a user namespace mapping container id 0 to HostUID/HostGID (the caller's
	// euid/egid) and runs the process as that id 0; cgroup limits then apply only where the
	// cgroup is delegated to the user.
	Rootless         bool
	HostUID, HostGID uint32
	// UserNS, when set, runs the container in a user namespace mapping container ids
	// 0..Size-1 to host ids UID.. and GID.. (its own slot): in-container root is an unprivileged
	// host uid. The process keeps the user the bundle names (65534 for generated specs), which
	// must lie inside the range. Not with Rootless.
	UserNS *IDMap
	// NoCgroup leaves the container without a cgroup of its own, so without memory, pids and
	// CPU limits: for a rootless caller that cannot create cgroups (cgroup v1, or v2 without
	// delegation). CgroupsPath is then ignored.
	NoCgroup bool
}

// IDMap is a container's id range on the host.
type IDMap struct {
	UID, GID, Size uint32
}

// Harden returns the spec to run for a bundle: the isolation defaults, with the process and root
// path taken from the bundle's spec. bundleDir is the bundle's absolute directory;
// a relative root path is resolved against it and must stay inside it.
func Harden(bundle *specs.Spec, bundleDir string, o Config) (*specs.Spec, error) {
	if bundle == nil || bundle.Process == nil || len(bundle.Process.Args) == 0 {
		return nil, errors.New("config.json has no process.args")
	}
	if bundle.Root == nil || bundle.Root.Path == "" {
		return nil, errors.New("config.json has no root.path")
	}
	if !filepath.IsAbs(bundleDir) {
		return nil, fmt.Errorf("bundle dir %q is not absolute", bundleDir)
	}
	root := bundle.Root.Path
	if filepath.IsAbs(root) {
		// An absolute root in an untrusted bundle could name any host directory.
		rel, err := filepath.Rel(bundleDir, filepath.Clean(root))
		if err != nil || !filepath.IsLocal(rel) {
			return nil, fmt.Errorf("config.json root.path %q is outside the bundle", root)
		}
	} else {
		if !filepath.IsLocal(root) {
			return nil, fmt.Errorf("config.json root.path %q is outside the bundle", root)
		}
		root = filepath.Join(bundleDir, root)
	}
	p := bundle.Process
	if err := checkArgs(p.Args, p.Env); err != nil {
		return nil, err
	}
	cwd := p.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return nil, fmt.Errorf("config.json process.cwd %q is not absolute", cwd)
	}
	user := specs.User{UID: p.User.UID, GID: p.User.GID, AdditionalGids: p.User.AdditionalGids}
	if m := o.UserNS; m != nil && !o.Rootless {
		for _, id := range append([]uint32{user.UID, user.GID}, user.AdditionalGids...) {
			if id >= m.Size {
				return nil, fmt.Errorf("config.json process.user names id %d, outside the container's id range 0-%d", id, m.Size-1)
			}
		}
	}
	env := p.Env
	if len(env) == 0 {
		env = []string{defaultPath}
	}
	return build(root, nil, p.Args, env, filepath.Clean(cwd), user, o), nil
}

// Generate returns the spec for a script or executable tool on a shared runtime root: rootfs =
// runtimeRoot (read-only), the tool folder bind-mounted read-only at /axocoatl/tool, the process
// running args as the unprivileged uid/gid 65534 (container id 0 when rootless).
func Generate(runtimeRoot, toolDir string, args []string, o Config) (*specs.Spec, error) {
	if !filepath.IsAbs(runtimeRoot) || !filepath.IsAbs(toolDir) {
		return nil, errors.New("runtime root and tool dir must be absolute")
	}
	if err := checkArgs(args, nil); err != nil {
		return nil, err
	}
	user := specs.User{UID: UnprivilegedID, GID: UnprivilegedID}
	if o.Rootless {
		user = specs.User{}
	}
	extra := []specs.Mount{{
		Destination: guestToolDir, Type: "bind", Source: toolDir,
		Options: []string{"rbind", "ro", "nosuid", "nodev"},
	}}
	env := []string{defaultPath, "HOME=/tmp", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"}
	return build(runtimeRoot, extra, args, env, guestToolDir, user, o), nil
}

func checkArgs(args, env []string) error {
	n := 0
	for _, s := range append(append([]string(nil), args...), env...) {
		if strings.IndexByte(s, 0) >= 0 {
			return errors.New("config.json process has a NUL byte in args or env")
		}
		n += len(s)
	}
	if n > maxArgBytes {
		return fmt.Errorf("config.json process args+env are %d bytes, the limit is %d", n, maxArgBytes)
	}
	return nil
}

func (o *Config) defaults() {
	if o.MemoryMB <= 0 {
		o.MemoryMB = DefaultMemoryMB
	}
	o.MemoryMB = min(o.MemoryMB, MaxMemoryMB)
	if o.Pids <= 0 {
		o.Pids = DefaultPids
	}
	if !(o.CPUs > 0) { // also NaN
		o.CPUs = DefaultCPUs
	}
	o.CPUs = min(o.CPUs, MaxCPUs)
	if o.Nofile == 0 {
		o.Nofile = DefaultNofile
	}
	if o.TmpSizeMB <= 0 {
		o.TmpSizeMB = DefaultTmpSizeMB
	}
}

func build(root string, extraMounts []specs.Mount, args, env []string, cwd string, user specs.User, o Config) *specs.Spec {
	o.defaults()
	hostname := o.Hostname
	if hostname == "" {
		hostname = "axocoatl"
	}
	s := &specs.Spec{
		Version:  ociVersion,
		Root:     &specs.Root{Path: root, Readonly: true},
		Hostname: hostname,
		Process: &specs.Process{
			Args:            append([]string(nil), args...),
			Env:             append([]string(nil), env...),
			Cwd:             cwd,
			User:            user,
			NoNewPrivileges: true,
			// Every capability set empty: nothing is kept, not even for uid 0.
			Capabilities: &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{}},
			Rlimits:      []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: o.Nofile, Soft: o.Nofile}},
		},
		Mounts: mounts(o, extraMounts),
		Linux: &specs.Linux{
			CgroupsPath: o.CgroupsPath,
			Namespaces:  namespaces(o),
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Resources:     resources(o),
			Seccomp:       DefaultSeccomp(),
		},
	}
	if o.NoCgroup {
		s.Linux.CgroupsPath = ""
		s.Linux.Resources = nil
	}
	if o.Rootless {
		// Only the caller's ids are mapped: whatever user a bundle names runs as container id 0,
		// which is the unprivileged caller on the host.
		s.Process.User = specs.User{}
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: o.HostUID, Size: 1}}
		s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: o.HostGID, Size: 1}}
	} else if m := o.UserNS; m != nil {
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: m.UID, Size: m.Size}}
		s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: m.GID, Size: m.Size}}
	}
	return s
}

func namespaces(o Config) []specs.LinuxNamespace {
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.CgroupNamespace}}
	if o.NetNS != "" {
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: o.NetNS})
	} else {
		// A fresh network namespace: libcontainer brings up loopback only, so there is no route out.
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	if o.Rootless || o.UserNS != nil {
		ns = append(ns, specs.LinuxNamespace{Type: specs.UserNamespace})
	}
	return ns
}

func mounts(o Config, extra []specs.Mount) []specs.Mount {
	// Only what a JSON-in/JSON-out tool uses (each mount costs the container start time):
	// no /sys (kernel and hardware details a tool has no business reading), no /dev/pts (no
	// terminal), no /dev/mqueue (POSIX message queues). /dev/shm stays: POSIX semaphores
	// (Python's multiprocessing locks) live there.
	m := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "noexec", "strictatime", "mode=755", "size=64k"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", "size=" + strconv.Itoa(o.TmpSizeMB) + "m"}},
	}
	if o.IODir != "" {
		m = append(m,
			specs.Mount{Destination: guestDir, Type: "bind", Source: o.IODir, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
			specs.Mount{Destination: guestInput, Type: "bind", Source: filepath.Join(o.IODir, "input.json"), Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}},
		)
	}
	if o.NetNS != "" && o.ResolvConf != "" {
		m = append(m, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: o.ResolvConf,
			Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}})
	}
	return append(m, extra...)
}

func resources(o Config) *specs.LinuxResources {
	mem := int64(o.MemoryMB) << 20
	quota := int64(o.CPUs * cpuPeriod)
	period := uint64(cpuPeriod)
	pids := o.Pids
	r := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
		Memory:  &specs.LinuxMemory{Limit: &mem},
		Pids:    &specs.LinuxPids{Limit: &pids},
		CPU:     &specs.LinuxCPU{Quota: &quota, Period: &period},
	}
	if o.Swap {
		// memsw (v1) is memory+swap: equal to the limit means no swap at all.
		swap := mem
		r.Memory.Swap = &swap
	}
	return r
}
