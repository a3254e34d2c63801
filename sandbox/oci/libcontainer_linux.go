package oci

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// libcontainerBackend embeds runc's libcontainer: the container init is this binary re-executed
// (see internal/containerinit).
type libcontainerBackend struct {
	root       string // libcontainer's state root ({StateRoot}/.libcontainer)
	useSystemd bool
	rootless   bool
}

// warnIfCopying logs when libcontainer will copy this binary into a memfd for every container
// instead of sealing it with a read-only overlayfs (a few ms of CPU per 10 MB of binary, on every
// create): always when rootless, and as root when the state root lies inside the binary's
// directory (overlayfs refuses the overlapping lower dirs).
func (b *libcontainerBackend) warnIfCopying(log *slog.Logger) {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	fi, err := os.Stat(exe)
	if err != nil {
		return
	}
	dir := filepath.Dir(exe)
	switch {
	case b.rootless:
		log.Debug("rootless: libcontainer copies this binary for every container; keep it lean", "binary", exe, "bytes", fi.Size())
	case b.root == dir || strings.HasPrefix(b.root, dir+"/"):
		log.Warn("the Oci state root is inside the directory of this binary, so libcontainer copies the binary for every container instead of sealing it; move one of them",
			"binary", exe, "state_root", filepath.Dir(b.root), "bytes", fi.Size())
	}
}

func (b *libcontainerBackend) name() string  { return BackendLibcontainer }
func (b *libcontainerBackend) canPool() bool { return true }

// specconvMu serialises specconv.CreateLibcontainerConfig: with a user namespace it writes the
// container's root uid and gid into the device entries of package-level defaults that every
// config shares (runc v1.5.2 spec_linux.go setupUserNamespace), so two containers created at once
// raced (the race detector saw it) and could get each other's owners on their device nodes.
// Under the lock each config gets its own copies of those entries.
var specconvMu sync.Mutex

func createLibcontainerConfig(opts *specconv.CreateOpts) (*configs.Config, error) {
	specconvMu.Lock()
	defer specconvMu.Unlock()
	cfg, err := specconv.CreateLibcontainerConfig(opts)
	if err != nil {
		return nil, err
	}
	for i, d := range cfg.Devices {
		own := *d
		cfg.Devices[i] = &own
	}
	return cfg, nil
}

func (b *libcontainerBackend) create(id string, spec *specs.Spec, stdout, stderr io.Writer, ns *slotNS) (instance, error) {
	cfg, err := createLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:       id,
		UseSystemdCgroup: b.useSystemd,
		Spec:             spec,
		RootlessEUID:     b.rootless,
		RootlessCgroups:  b.rootless,
	})
	if err != nil {
		return nil, err
	}
	if ns != nil {
		// Set after the conversion: given in the spec, specconv would read the namespace's maps
		// back through a forked helper (its fast path knows only /proc/PID/ns/user); the spec's
		// mappings are the namespace's.
		for i := range cfg.Namespaces {
			if cfg.Namespaces[i].Type == configs.NEWUSER {
				cfg.Namespaces[i].Path = ns.path
			}
		}
	}
	c, err := libcontainer.Create(b.root, id, cfg)
	if err != nil {
		return nil, err
	}
	p := spec.Process
	proc := &libcontainer.Process{
		Args:             p.Args,
		Env:              p.Env,
		Cwd:              p.Cwd,
		UID:              int(p.User.UID),
		GID:              int(p.User.GID),
		AdditionalGroups: gids(p.User.AdditionalGids),
		Stdout:           stdout,
		Stderr:           stderr,
		Init:             true,
		// specconv does not convert rlimits (runc's CLI does): libcontainer applies these.
		Rlimits: rlimits(p.Rlimits),
	}
	if ns != nil {
		// libcontainer's prlimit of the init would need CAP_SYS_RESOURCE over the slot's
		// namespace; the limits are applied below as the namespace's owner instead, before the
		// init execs the tool (which inherits them).
		proc.Rlimits = nil
	}
	if err := c.Start(proc); err != nil {
		_ = c.Destroy()
		return nil, err
	}
	inst := &lcInstance{c: c, proc: proc}
	if ns != nil {
		pid, err := proc.Pid()
		for _, r := range rlimits(p.Rlimits) {
			if err == nil {
				err = ns.prlimit(pid, r.Type, r.Soft, r.Hard)
			}
		}
		if err != nil {
			_ = inst.destroy()
			return nil, err
		}
	}
	if st, err := c.State(); err == nil {
		inst.memDir = st.CgroupPaths["memory"]
		if inst.memDir == "" {
			inst.memDir = st.CgroupPaths[""]
		}
	}
	return inst, nil
}

func rlimits(rl []specs.POSIXRlimit) []configs.Rlimit {
	var out []configs.Rlimit
	for _, r := range rl {
		if r.Type == "RLIMIT_NOFILE" { // the only one ocispec sets
			out = append(out, configs.Rlimit{Type: unix.RLIMIT_NOFILE, Hard: r.Hard, Soft: r.Soft})
		}
	}
	return out
}

func gids(g []uint32) []int {
	out := make([]int, len(g))
	for i, v := range g {
		out[i] = int(v)
	}
	return out
}

func (b *libcontainerBackend) ids() []string {
	ents, _ := os.ReadDir(b.root)
	var ids []string
	for _, e := range ents {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

func (b *libcontainerBackend) reap(id string) {
	c, err := libcontainer.Load(b.root, id)
	if err == nil {
		_ = c.Signal(unix.SIGKILL)
		if c.Destroy() == nil {
			return
		}
	}
	_ = os.RemoveAll(filepath.Join(b.root, id))
}

type lcInstance struct {
	c      *libcontainer.Container
	proc   *libcontainer.Process
	memDir string

	once       sync.Once // guards destroyErr
	destroyErr error
}

func (i *lcInstance) start() error { return i.c.Exec() }

func (i *lcInstance) wait() (int, error) {
	ps, err := i.proc.Wait()
	if ps != nil {
		return exitCode(ps), nil
	}
	return -1, err
}

func (i *lcInstance) kill() {
	// SIGKILL to the init of a private pid namespace kills every process in it.
	if err := i.proc.Signal(unix.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = i.c.Signal(unix.SIGKILL)
	}
}

func (i *lcInstance) oomKilled() bool { return oomKillCount(i.memDir) > 0 }

func (i *lcInstance) destroy() error {
	i.once.Do(func() {
		i.kill()
		// Reap the init if nobody waited for it (a pooled container never started).
		_, _ = i.proc.Wait()
		i.destroyErr = i.c.Destroy()
	})
	return i.destroyErr
}
