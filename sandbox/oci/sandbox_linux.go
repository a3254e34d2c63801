package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/callnet"

	// The container init hook: a binary that runs containers must act as their init.
	"github.com/axocoatl/isolation/internal/callio"
	_ "github.com/axocoatl/isolation/internal/containerinit"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/internal/bundle"
	"github.com/axocoatl/isolation/sandbox/internal/poolbudget"
	"github.com/axocoatl/isolation/sandbox/oci/internal/ocispec"
)

// Sandbox is the Oci tier. It implements sandbox.Sandbox, sandbox.Preparer and sandbox.Pooler.
// Safe for concurrent use; Close is idempotent.
type Sandbox struct {
	cfg      Config
	log      *slog.Logger
	be       backend
	rootless bool
	ioRoot   string                  // StateRoot, absolute
	lock     *os.File                // shared flock on StateRoot/.lock; nil when broken
	broken   *isolation.Availability // why the state root is unusable; nil when it is usable
	ids      *idSlots                // per-container user-namespace id slots; nil when rootless or broken
	budget   *poolbudget.Budget      // bounds the warm containers of all pools together
	owner    *claim                  // this Sandbox's claim on its containers and its keeper; nil when broken

	mu     sync.Mutex // protects pools and closed, and orders teardown.Add before Close's Wait
	pools  map[string]*pool
	closed bool

	// teardown counts cold-call containers being destroyed after their call returned; Close
	// waits for it. Add only under mu while !closed.
	teardown sync.WaitGroup
	// calls counts Runs in flight; Close waits for them before it tears anything down, so no
	// container is created after Close began. Add only under mu while !closed.
	calls sync.WaitGroup

	// net is the pool of per-call network namespaces (net_linux.go), made for the first call with
	// a policy.
	net callnet.Lazy
}

// The optional interfaces of package sandbox this tier has.
var (
	_ sandbox.Sandbox         = (*Sandbox)(nil)
	_ sandbox.Preparer        = (*Sandbox)(nil)
	_ sandbox.Pooler          = (*Sandbox)(nil)
	_ sandbox.MemoryDefaulter = (*Sandbox)(nil)
	_ sandbox.BaseSupporter   = (*Sandbox)(nil)
	_ sandbox.EgressSupporter = (*Sandbox)(nil)
)

// New returns the Oci sandbox for cfg. It creates StateRoot and, unless another live Sandbox
// holds it, removes what a crashed earlier owner left there (containers, cgroups, mounts, dirs).
//
// New fails only for an invalid configuration (an unknown backend). A host on which the state root
// cannot be created or locked (an unprivileged user with the default /run path, a read-only
// filesystem) still gets a Sandbox: its Probe reports why the tier is unavailable and how to fix
// it, and its Run and Prepare fail with isolation.ErrTierUnavailable. New does not check that
// containers can run here: Probe does.
func New(cfg Config) (*Sandbox, error) {
	rootless := os.Geteuid() != 0
	if cfg.StateRoot == "" && rootless {
		cfg.StateRoot = rootlessStateRoot()
	}
	cfg = cfg.withDefaults()
	for _, p := range []*string{&cfg.StateRoot, &cfg.BundleRoot, &cfg.RuntimeRoot} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	s := &Sandbox{cfg: cfg, log: cfg.Logger.With("tier", "Oci"), rootless: rootless, ioRoot: cfg.StateRoot, pools: map[string]*pool{},
		budget: poolbudget.New(cfg.PoolMaxTotal, cfg.PoolMaxMemoryMB)}
	routeLibcontainerLogs(s.log)
	be, err := newBackend(cfg, rootless)
	if err != nil {
		return nil, err
	}
	s.be = be
	if b, ok := s.be.(*libcontainerBackend); ok {
		b.warnIfCopying(s.log)
	}
	err = s.openStateRoot()
	if err != nil {
		who := "this process"
		if rootless {
			who = fmt.Sprintf("uid %d", os.Geteuid())
		}
		s.broken = &isolation.Availability{Backend: s.be.name(),
			Reason: fmt.Sprintf("the state root %s cannot be used by %s: %v", cfg.StateRoot, who, err),
			Fix:    "set the Oci state_root to a directory this user can create and write (rootless: for example under $XDG_RUNTIME_DIR), or run as root"}
		s.log.Warn("Oci tier unavailable", "reason", s.broken.Reason)
	} else if !rootless && !cfg.noUserNS {
		if s.ids, err = newIDSlots(cfg.IDUser, cfg.IDSlots, cfg.idOffset, s.log); err != nil {
			s.broken = &isolation.Availability{Backend: s.be.name(),
				Reason: fmt.Sprintf("no user-namespace id range for the Oci tier's user %s: %v", cfg.IDUser, err),
				Fix: fmt.Sprintf("give %s a range of at least 65536 ids in /etc/subuid and /etc/subgid (e.g. `usermod --add-subuids %d-%d --add-subgids %d-%d %s` after `useradd --system %s`), or make /etc writable for the first start",
					cfg.IDUser, idBaseMin, idBaseMin+cfg.IDSlots*idSlotSize-1, idBaseMin, idBaseMin+cfg.IDSlots*idSlotSize-1, cfg.IDUser, cfg.IDUser)}
			s.log.Warn("Oci tier unavailable", "reason", s.broken.Reason)
		}
	}
	return s, nil
}

// newBackend returns the backend cfg (with defaults, absolute paths) selects.
func newBackend(cfg Config, rootless bool) (backend, error) {
	switch cfg.Backend {
	case BackendLibcontainer:
		return &libcontainerBackend{root: filepath.Join(cfg.StateRoot, ".libcontainer"), useSystemd: cfg.UseSystemd, rootless: rootless}, nil
	case BackendCrun, BackendRunc:
		bin := cfg.RuntimeBinary
		if bin == "" {
			bin = cfg.Backend
		}
		p, err := exec.LookPath(bin)
		if err != nil {
			// Kept as a backend whose calls fail; Probe explains.
			p = bin
		}
		return &binaryBackend{kind: cfg.Backend, bin: p, root: filepath.Join(cfg.StateRoot, ".runtime"),
			bundles: filepath.Join(cfg.StateRoot, ".bundles"), useSystemd: cfg.UseSystemd,
			hybridFix: cfg.Backend == BackendCrun && hybridCgroups(), keep: cfg.Backend == BackendRunc}, nil
	}
	return nil, fmt.Errorf("oci: unknown backend %q (want libcontainer, crun or runc)", cfg.Backend)
}

// openStateRoot creates and locks the state root; with the only lock on it, it reaps everything
// there, else what dead owners left. Then it claims an owner directory (see reap_linux.go).
func (s *Sandbox) openStateRoot() error {
	if err := os.MkdirAll(s.cfg.StateRoot, 0o711); err != nil {
		return err
	}
	if !s.rootless {
		// Mount points of containers' rootfs (see rootmount_linux.go): must be reachable by the
		// containers' unprivileged uids whatever the state root's parents are.
		if err := os.MkdirAll(rootsDir, 0o711); err != nil {
			return err
		}
	}
	lock, err := os.OpenFile(filepath.Join(s.cfg.StateRoot, ".lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	// Exclusive means no live Sandbox uses this state root: whatever is in it is debris.
	if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		s.reapAll()
	} else {
		reapDeadOwners(s.ioRoot, s.log)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
		lock.Close()
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if err := s.claimOwner(); err != nil {
		lock.Close()
		return fmt.Errorf("owner directory: %w", err)
	}
	s.lock = lock
	return nil
}

// rootlessStateRoot is the default state root of an unprivileged user: $XDG_RUNTIME_DIR/axocoatl/oci
// (a per-user tmpfs on systemd hosts), else a directory in the user's cache dir.
func rootlessStateRoot() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return filepath.Join(d, "axocoatl", "oci")
	}
	if d, err := os.UserCacheDir(); err == nil && filepath.IsAbs(d) {
		return filepath.Join(d, "axocoatl", "oci-state")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("axocoatl-oci-%d", os.Geteuid()))
}

// unavailable is the error of Run and Prepare on a sandbox whose state root is unusable.
func (s *Sandbox) unavailable() error {
	if s.broken == nil {
		return nil
	}
	return &isolation.Error{Kind: isolation.ErrTierUnavailable, Message: s.broken.Reason + " (fix: " + s.broken.Fix + ")"}
}

// cgroupLimits is false for a rootless sandbox with the cgroupfs driver: an unprivileged user
// cannot create cgroups there, so containers get no cgroup (and no memory, pids or CPU limit).
func (s *Sandbox) cgroupLimits() bool { return !s.rootless || s.cfg.UseSystemd }

// hybridCgroups is true on a cgroup v1 host that also mounts the unified hierarchy.
func hybridCgroups() bool {
	if cgroupV2() {
		return false
	}
	var st syscall.Statfs_t
	return syscall.Statfs("/sys/fs/cgroup/unified", &st) == nil && st.Type == 0x63677270 // CGROUP2_SUPER_MAGIC
}

// Tier is isolation.TierOCI.
func (s *Sandbox) Tier() isolation.Tier { return isolation.TierOCI }

// Supports: ContainerImage always; Python, Shell and Arbitrary only with a RuntimeRoot (Python
// also needs python3 in it).
func (s *Sandbox) Supports(req isolation.RuntimeRequirement) string {
	switch req {
	case isolation.RequireContainerImage:
		return ""
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
		if s.cfg.RuntimeRoot == "" {
			return fmt.Sprintf("the Oci tier runs %s tools only with a runtime root filesystem (Config.RuntimeRoot) and none is configured", req)
		}
		if req == isolation.RequirePython && !hasFile(s.cfg.RuntimeRoot, "usr/bin/python3", "bin/python3", "usr/local/bin/python3") {
			return fmt.Sprintf("the runtime root %s has no python3", s.cfg.RuntimeRoot)
		}
		if req == isolation.RequireShell && !hasFile(s.cfg.RuntimeRoot, "bin/sh") {
			return fmt.Sprintf("the runtime root %s has no /bin/sh", s.cfg.RuntimeRoot)
		}
		return ""
	}
	return fmt.Sprintf("the Oci tier does not run %s tools", req)
}

// SupportsBase implements sandbox.BaseSupporter: script tools run on their base image's root
// (a bundle's rootfs, with its environment) as they run on the runtime root.
func (s *Sandbox) SupportsBase(req isolation.RuntimeRequirement) string {
	switch req {
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
		return ""
	}
	return fmt.Sprintf("the Oci tier runs %s tools on a base image only as Python, Shell or Arbitrary", req)
}

func hasFile(root string, rels ...string) bool {
	for _, r := range rels {
		// Lstat: a symlink inside the root (bin/sh -> busybox) resolves inside the container.
		if _, err := os.Lstat(filepath.Join(root, r)); err == nil {
			return true
		}
	}
	return false
}

// Run runs one call in a fresh container (or a pre-created one from the tool's warm pool).
func (s *Sandbox) Run(ctx context.Context, call sandbox.Call) (out sandbox.Outcome, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return out, errors.New("oci: sandbox is closed")
	}
	s.calls.Add(1)
	p := s.pools[poolKey(call)]
	s.mu.Unlock()
	defer s.calls.Done()
	if err := s.unavailable(); err != nil {
		return out, err
	}
	if err := ctx.Err(); err != nil {
		return out, sandbox.ContextError(ctx)
	}
	var c *ctr
	if p != nil {
		c = p.take(stampOf(call))
	}
	if c == nil {
		if c, err = s.create(ctx, call, call.Input); err != nil {
			return out, err
		}
	} else if err := c.writeInput(s.ioSize(call.Limits.MaxOutputBytes, len(call.Input)), call.Input); err != nil {
		s.release(c)
		return out, err
	}
	defer func() {
		if r := recover(); r != nil {
			s.release(c)
			panic(r)
		}
	}()
	var unbind func()
	if c.ns != nil {
		// The call's policy holds for the container's address from its start to its end.
		unbind = c.ns.BindCall(s.cfg.Gate, call.Limits.Egress, call.ID)
	}
	out, err = s.execute(ctx, c, call)
	if unbind != nil {
		unbind()
	}
	// The call's outcome is complete once the process exited and output.json was read: tearing
	// the container down (cgroups, state, I/O dir) happens after Run returns. With a pool, the
	// used container goes to its filler, which also creates the replacement; without one it is
	// destroyed on a goroutine of its own that Close waits for.
	if p != nil {
		p.retire(c)
	} else {
		s.releaseAsync(c)
	}
	return out, err
}

// releaseAsync destroys c on another goroutine; once Close has begun, on this one (Close must not
// return before c is gone).
func (s *Sandbox) releaseAsync(c *ctr) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.release(c)
		return
	}
	s.teardown.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.teardown.Done()
		s.release(c)
	}()
}

// rootsDir holds the rootfs mounts of containers with a user namespace, one per container id
// (unique host-wide), whatever sandbox made them: a path every container uid can reach.
const rootsDir = "/run/axocoatl/roots"

// ctr is one container created for one call, with its I/O dir.
type ctr struct {
	id    string
	ioDir string
	// ioSize is the size cap of the I/O dir's tmpfs (0: a plain directory, rootless).
	ioSize int64
	slot   *idSlot // its user-namespace ids; nil when rootless
	root   string  // the dir of the rootfs mount made for it ("" when none)
	inst   instance
	tail   *callio.TailBuffer // stderr
	stdout *callio.TailBuffer
	tool   string
	// ns is the network namespace of a call with a network policy (nil: loopback only).
	ns *callnet.NS
	// input is the pooled container's empty input.json, open for writing since creation so a
	// call writes its input with a single write; nil once written or closed. Only the goroutine
	// owning the container uses it.
	input *os.File
	// stamp is the tool's on-disk identity when a pooled container was created (see toolStamp);
	// zero for a cold call's container, which never goes back to a pool.
	stamp toolStamp
}

// toolStamp identifies what a container bakes in when it is created: the tool folder, a
// bundle's config.json and rootfs, a runtime-root tool's entrypoint (device, inode, size,
// mtime of each). A pooled container whose stamp differs from the tool's current one was made
// from an older version of the tool (config.json edited, rootfs or folder replaced, as `axoiso
// bundle` does) and must not serve a call.
type toolStamp [4]fileStamp

type fileStamp struct {
	dev, ino        uint64
	size, mtimeNsec int64
}

func stampOf(call sandbox.Call) toolStamp {
	var st toolStamp
	paths := [4]string{call.Dir, "", "", call.Entrypoint}
	if call.Dir != "" {
		paths[1], paths[2] = filepath.Join(call.Dir, "config.json"), filepath.Join(call.Dir, "rootfs")
	}
	for i, p := range paths {
		var s syscall.Stat_t
		if p != "" && syscall.Stat(p, &s) == nil {
			st[i] = fileStamp{uint64(s.Dev), s.Ino, s.Size, s.Mtim.Nano()}
		}
	}
	return st
}

// writeInput writes a pooled container's input.json: the same inode the container has bound
// read-only at /axocoatl/input.json, empty since creation, so no truncation is needed.
// The I/O tmpfs was sized without the input when the container was made: it is resized first.
func (c *ctr) writeInput(size int64, in []byte) error {
	f := c.input
	c.input = nil
	if f == nil {
		return errors.New("oci: pooled container has no open input file")
	}
	if c.ioSize != 0 && size != c.ioSize {
		if err := resizeIODir(c.ioDir, size); err != nil {
			f.Close()
			return fmt.Errorf("oci: %w", err)
		}
		c.ioSize = size
	}
	_, err := f.WriteAt(in, 0)
	return errors.Join(err, f.Close())
}

func (s *Sandbox) containerID(tool string) string {
	return "axocoatl-" + tool + "-" + uuid.NewString()
}

// DefaultMemoryMB is the memory limit of calls that set none (sandbox.MemoryDefaulter).
func (s *Sandbox) DefaultMemoryMB() int { return s.cfg.MemoryMB }

// memoryMB is the call's memory limit: its own, else the tier's default; never over
// sandbox.MaxMemoryMB, whatever a library caller passes (the executor caps it far lower).
func (s *Sandbox) memoryMB(call sandbox.Call) int {
	if mb := sandbox.ClampMemoryMB(call.Limits.MemoryMB); mb > 0 {
		return mb
	}
	return s.cfg.MemoryMB
}

// spec builds the call's hardened spec; ids is the container's id range (nil when rootless), ns
// the network namespace to join (nil: loopback only).
func (s *Sandbox) spec(call sandbox.Call, id, ioDir string, ids *ocispec.IDMap, ns *callnet.NS) (*specs.Spec, error) {
	if err := callio.CheckCallPaths(call); err != nil {
		return nil, err
	}
	dir := filepath.Clean(call.Dir)
	if rel, err := filepath.Rel(s.cfg.BundleRoot, dir); err != nil || !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("oci: tool dir %s is not inside the bundle root %s", dir, s.cfg.BundleRoot)
	}
	mem := s.memoryMB(call)
	o := ocispec.Config{
		Hostname:    "axocoatl",
		CgroupsPath: s.cgroupsPath(id),
		IODir:       ioDir,
		MemoryMB:    mem,
		Pids:        s.cfg.Pids,
		CPUs:        s.cfg.CPUs,
		Nofile:      s.cfg.Nofile,
		TmpSizeMB:   s.cfg.TmpSizeMB,
		Swap:        swapAccounting(),
		Rootless:    s.rootless,
		NoCgroup:    !s.cgroupLimits(),
		HostUID:     uint32(os.Geteuid()),
		HostGID:     uint32(os.Getegid()),
		UserNS:      ids,
	}
	if ns != nil {
		o.NetNS, o.ResolvConf = ns.Path(), ns.ResolvConf
	}
	var sp *specs.Spec
	switch call.Runtime {
	case isolation.RequireContainerImage:
		raw, err := bundle.ReadConfig(dir)
		if err != nil {
			return nil, err
		}
		var b specs.Spec
		if err := json.Unmarshal(raw, &b); err != nil {
			return nil, bundle.Error(dir, "config.json", err)
		}
		if sp, err = ocispec.Harden(&b, dir, o); err != nil {
			return nil, bundle.Error(dir, "config.json", err)
		}
		// The root every backend gets: resolved once, no symlink, inside the bundle.
		if sp.Root.Path, err = bundle.ResolveRoot(dir, sp.Root.Path); err != nil {
			return nil, err
		}
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
		root := s.cfg.RuntimeRoot
		var env []string
		if call.Base != "" {
			// The tool's base image: its root (resolved beneath its bundle) and environment.
			base := filepath.Clean(call.Base)
			if rel, err := filepath.Rel(s.cfg.BundleRoot, base); err != nil || !filepath.IsLocal(rel) {
				return nil, fmt.Errorf("oci: base %s is not inside the bundle root %s", base, s.cfg.BundleRoot)
			}
			var p bundle.Process
			var err error
			if root, p, err = bundle.Read(base); err != nil {
				return nil, err
			}
			env = bundle.ScriptEnv(p.Env)
		} else if why := s.Supports(call.Runtime); why != "" {
			return nil, &isolation.Error{Kind: isolation.ErrTierUnavailable, Message: why}
		}
		rel, err := filepath.Rel(dir, filepath.Clean(call.Entrypoint))
		if err != nil || call.Entrypoint == "" {
			return nil, fmt.Errorf("oci: entrypoint %q is not inside %s", call.Entrypoint, dir)
		}
		args, err := bundle.ScriptArgs(call.Runtime.String(), rel)
		if err != nil {
			return nil, fmt.Errorf("oci: %w", err)
		}
		if sp, err = ocispec.Generate(root, dir, args, o); err != nil {
			return nil, fmt.Errorf("oci: %w", err)
		}
		if env != nil {
			sp.Process.Env = env
		}
	default:
		return nil, &isolation.Error{Kind: isolation.ErrTierUnavailable, Message: s.Supports(call.Runtime)}
	}
	if s.cfg.NoSeccomp {
		sp.Linux.Seccomp = nil
	}
	// The tool's env and secrets, over the bundle's or runtime root's own.
	sp.Process.Env = sandbox.MergeEnv(sp.Process.Env, call.Env)
	if ns != nil && !hasResolvConf(sp.Root.Path) {
		// Names will not resolve; addresses granted by CIDR still work.
		s.log.Warn("the tool has a network policy but its root filesystem has no regular /etc/resolv.conf to mount the gate's resolver over: add an empty one", "tool", call.Tool)
		sp.Mounts = slices.DeleteFunc(sp.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/resolv.conf" })
	}
	if s.rootless || ids != nil {
		// Rootless, or with a user namespace (the rootfs is then mounted read-only before the
		// init starts): the init cannot create the mount points itself.
		if err := ensureMountpoints(sp); err != nil {
			return nil, err
		}
	}
	return sp, nil
}

// ensureMountpoints creates the top-level mount points (/proc, /dev, /tmp, /axocoatl) a
// rootfs lacks. As root libcontainer does this itself; a rootless init cannot write a rootfs owned
// by another user, so the sandbox does it beforehand where the rootfs is this user's (a bundle this
// user built) and otherwise fails with what to do.
func ensureMountpoints(sp *specs.Spec) error {
	for _, m := range sp.Mounts {
		dest := filepath.Clean(m.Destination)
		if filepath.Dir(dest) != "/" {
			continue // inside another mount of the sandbox's own
		}
		p := filepath.Join(sp.Root.Path, dest)
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			continue // present (a symlink is resolved inside the rootfs by the runtime)
		}
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("oci: the rootfs %s has no %s directory and uid %d cannot create it (%v): create it in the rootfs (mkdir %s), or build the bundle as this user",
				sp.Root.Path, dest, os.Geteuid(), err, p)
		}
	}
	return nil
}

func (s *Sandbox) cgroupsPath(id string) string {
	if s.cfg.UseSystemd {
		return s.cfg.CgroupParent + ".slice:axocoatl:" + id
	}
	return "/" + s.cfg.CgroupParent + "/" + id
}

func swapAccounting() bool {
	if cgroupV2() {
		return false // memory.swap.max is left as the parent's; v2 OOM detection is unaffected
	}
	_, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
	return err == nil
}

// create makes the I/O dir and a container waiting to start, in a network namespace of its own
// when the call has a network policy. On error nothing remains.
func (s *Sandbox) create(ctx context.Context, call sandbox.Call, input []byte) (c *ctr, err error) {
	if s.cgroupLimits() {
		// The init's cgroup migration first waits for an RCU grace period; start that wait now so
		// it overlaps with the spec, the I/O dir and the init's exec (see PrimeCgroups).
		PrimeCgroups()
	}
	id := s.containerID(call.Tool)
	var slot *idSlot
	var ids *ocispec.IDMap
	if s.ids != nil {
		if slot, err = s.ids.acquire(); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				slot.release()
			}
		}()
		ids = &ocispec.IDMap{UID: slot.uid, GID: slot.gid, Size: idSlotSize}
	}
	// Claimed before anything of it exists: if this process dies from here on, its keeper (or the
	// next process to start) reaps it.
	if err := s.mark(id); err != nil {
		return nil, err
	}
	ioDir := filepath.Join(s.ioRoot, id)
	if err := os.Mkdir(ioDir, 0o700); err != nil {
		s.unmark(id)
		return nil, fmt.Errorf("oci: I/O dir: %w", err)
	}
	defer func() {
		if err != nil {
			if rerr := removeIODir(ioDir); rerr != nil {
				s.log.Warn("remove I/O dir", "dir", ioDir, "error", rerr)
			} else {
				s.unmark(id)
			}
		}
	}()
	nctx, cancel := context.WithTimeout(ctx, netWait)
	ns, err := s.takeNetns(nctx, call)
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && ns != nil {
			s.returnNetns(&ctr{ns: ns}, true) // the container never started: nothing ran in it
		}
	}()
	sp, err := s.spec(call, id, ioDir, ids, ns)
	if err != nil {
		return nil, err
	}
	// The tool's user must be able to write output.json into the I/O dir, and no one else (it is
	// 0700): with a user namespace its host uid is the slot's, which no other container has.
	uid, gid := int(sp.Process.User.UID), int(sp.Process.User.GID)
	if s.rootless {
		uid, gid = os.Geteuid(), os.Getegid()
	} else if slot != nil {
		uid, gid = int(slot.uid)+uid, int(slot.gid)+gid
	}
	var ioSize int64
	if !s.rootless {
		ioSize = s.ioSize(call.Limits.MaxOutputBytes, len(input))
		if err := mountIODir(ioDir, ioSize, uid, gid); err != nil {
			return nil, fmt.Errorf("oci: %w", err)
		}
	}
	var root string
	var userns *slotNS
	if slot != nil {
		root = filepath.Join(rootsDir, id)
		mounted, _, err := mountRoot(sp.Root.Path, root, slot.ns, int(slot.uid), int(slot.gid))
		if err != nil {
			return nil, fmt.Errorf("oci: rootfs: %w", err)
		}
		defer func() {
			if err != nil {
				_ = unmountRoot(root)
			}
		}()
		sp.Root.Path = mounted
		userns = slot.join()
	}
	in, err := os.OpenFile(filepath.Join(ioDir, sandbox.InputFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("oci: input: %w", err)
	}
	if input != nil {
		_, err = in.Write(input)
		err = errors.Join(err, in.Close())
		in = nil
	}
	defer func() {
		if err != nil && in != nil {
			in.Close()
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("oci: input: %w", err)
	}
	if s.rootless {
		if err := os.Chown(ioDir, uid, gid); err != nil {
			return nil, fmt.Errorf("oci: I/O dir: %w", err)
		}
	}
	tail := callio.NewTailBuffer(call.Limits.MaxStderrBytes)
	if tail.Max <= 0 {
		tail.Max = sandbox.DefaultMaxStderrBytes
	}
	stdout := callio.NewTailBuffer(tail.Max)
	inst, err := s.be.create(id, sp, stdout, tail, userns)
	if err != nil {
		return nil, fmt.Errorf("oci: create container (%s): %w", s.be.name(), err)
	}
	return &ctr{id: id, ioDir: ioDir, ioSize: ioSize, slot: slot, root: root, inst: inst, tail: tail, stdout: stdout, tool: call.Tool, input: in, ns: ns}, nil
}

// execute starts c, waits for it under ctx and collects the outcome.
func (s *Sandbox) execute(ctx context.Context, c *ctr, call sandbox.Call) (sandbox.Outcome, error) {
	out := sandbox.Outcome{Backend: s.be.name()}
	if err := c.inst.start(); err != nil {
		return out, fmt.Errorf("oci: start container: %w", err)
	}
	// Wait on this goroutine; the context's end kills the container, which ends the wait.
	stop := context.AfterFunc(ctx, c.inst.kill)
	code, err := c.inst.wait()
	sandbox.ToolExited(ctx)
	if !stop() {
		return out, sandbox.ContextError(ctx)
	}
	if err != nil {
		return out, fmt.Errorf("oci: wait: %w", err)
	}
	out.ExitCode = code
	out.Stderr, out.Stdout = c.tail.String(), c.stdout.String()
	if code != 0 && c.inst.oomKilled() {
		mem := s.memoryMB(call)
		return out, &isolation.Error{Kind: isolation.ErrMemoryLimit, ExitCode: code, Stderr: out.Stderr,
			Message: fmt.Sprintf("killed by the OOM killer at the %d MB memory limit", mem)}
	}
	b, err := callio.ReadOutputFile(filepath.Join(c.ioDir, sandbox.OutputFile), call.Limits.MaxOutputBytes)
	if err != nil {
		return out, err
	}
	out.Output = b
	return out, nil
}

// release destroys c and removes its I/O dir. c may be nil.
func (s *Sandbox) release(c *ctr) {
	if c != nil {
		s.destroy(c)
	}
}

func (s *Sandbox) destroy(c *ctr) {
	if c.input != nil {
		c.input.Close()
		c.input = nil
	}
	destroyed := true
	clean := true
	if err := c.inst.destroy(); err != nil {
		s.log.Warn("destroy container", "id", c.id, "error", err)
		s.be.reap(c.id)
		destroyed = false
	}
	if !s.cfg.UseSystemd && s.cgroupLimits() {
		// libcontainer removes its cgroups; this catches what a failed destroy left.
		for _, d := range cgroupDirs(s.cgroupsPath(c.id)) {
			if err := removeCgroup(d); err != nil {
				s.log.Warn("remove cgroup", "dir", d, "error", err)
				clean = false
			}
		}
	}
	if c.root != "" {
		if err := unmountRoot(c.root); err != nil {
			s.log.Warn("remove rootfs mount", "dir", c.root, "error", err)
			clean = false
		}
	}
	if err := removeIODir(c.ioDir); err != nil {
		s.log.Warn("remove I/O dir", "dir", c.ioDir, "error", err)
		clean = false
	}
	s.returnNetns(c, destroyed)
	if c.slot != nil {
		if destroyed {
			c.slot.release()
		} else {
			c.slot.quarantine()
		}
		c.slot = nil
	}
	if destroyed && clean {
		// Else the claim stays, for the keeper to reap at Close or at this process's end.
		s.unmark(c.id)
	}
}

// hostMountinfo reads the mount table of this process's own mount namespace. Not through
// /proc/self: that is the main thread's view, and libcontainer can leave the main thread inside a
// container's mount namespace (it locks a thread to enter one and never unlocks it; Go parks a
// locked main thread instead of ending it). Any thread an unlocked goroutine runs on is in the
// process's namespace, so the calling thread is read, locked for the read.
func hostMountinfo() ([]byte, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return os.ReadFile("/proc/thread-self/mountinfo")
}

func sleepBrief() { time.Sleep(5 * time.Millisecond) }

// Close tears down every pool, waits for background destroys (pooled and cold-call containers)
// and releases the state root: when it returns, nothing of any container remains. Idempotent.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	pools := s.pools
	s.pools = map[string]*pool{}
	s.mu.Unlock()
	s.calls.Wait()
	for _, p := range pools {
		p.close()
	}
	s.teardown.Wait()
	s.closeNet()
	if s.ids != nil {
		s.ids.close()
	}
	if !s.cfg.UseSystemd && s.cgroupLimits() {
		for _, d := range cgroupDirs("/" + s.cfg.CgroupParent) {
			_ = syscall.Rmdir(d) // only when empty: other sandboxes may share the parent
		}
	}
	if s.lock == nil {
		return nil
	}
	s.owner.release(s.log, s.ioRoot)
	_ = os.Remove(filepath.Join(s.ioRoot, ".libcontainer"))
	return s.lock.Close()
}
