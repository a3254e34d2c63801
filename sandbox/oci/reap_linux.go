package oci

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/internal/callio"
	"github.com/axocoatl/isolation/internal/keeper"
)

// Nothing of a container may outlive the process that owns it. Each Sandbox claims its containers
// in an owner directory, {StateRoot}/.owners/{tag}/: it holds a shared flock on the directory for
// its whole life and keeps one empty file per container in it (created before anything of the
// container exists, removed once all of it is gone) beside .params, how its containers were made.
// A keeper process (package internal/keeper) holds the same lock; when the Sandbox's process dies,
// however it dies, the keeper reaps the containers the directory lists (reapOwner) and removes it.
// A process that starts on the state root (New, and ReapDead, which axoiso.New calls before any
// tier is built) reaps the owner directories nobody holds any more, that is those whose owner and
// keeper are both dead; and when it gets the state root's lock exclusively (no live Sandbox nor
// keeper uses the root) it reaps every container found there, claimed or not (reapAll).
// Both paths use reapID for each container.

const (
	ownersDir  = ".owners"
	paramsFile = ".params"
	newPrefix  = ".new-"
	keeperKind = "oci"
	// keeperStop bounds how long Close waits for the keeper to see its pipe closed and exit.
	keeperStop = 10 * time.Second
)

func init() { keeper.Hook(keeperKind, keeperSetup) }

// reapParams is how the containers of one owner were made: what reaping them needs besides their
// ids. Stored as the owner directory's .params; the keeper gets StateRoot and Owner.
type reapParams struct {
	StateRoot     string `json:"state_root"`
	Owner         string `json:"owner,omitempty"`
	Backend       string `json:"backend,omitempty"`
	RuntimeBinary string `json:"runtime_binary,omitempty"`
	UseSystemd    bool   `json:"use_systemd,omitempty"`
	Rootless      bool   `json:"rootless,omitempty"`
	CgroupParent  string `json:"cgroup_parent,omitempty"`
}

func (s *Sandbox) reapParams() reapParams {
	p := reapParams{StateRoot: s.cfg.StateRoot, Backend: s.cfg.Backend, RuntimeBinary: s.cfg.RuntimeBinary,
		UseSystemd: s.cfg.UseSystemd, Rootless: s.rootless, CgroupParent: s.cfg.CgroupParent}
	if b, ok := s.be.(*binaryBackend); ok {
		p.RuntimeBinary = b.bin // as resolved in this process's PATH
	}
	return p
}

// reaper removes containers of one state root made with one set of parameters.
type reaper struct {
	p   reapParams
	be  backend
	log *slog.Logger
}

func newReaper(p reapParams, log *slog.Logger) (*reaper, error) {
	cfg := Config{StateRoot: p.StateRoot, Backend: p.Backend, RuntimeBinary: p.RuntimeBinary,
		UseSystemd: p.UseSystemd, CgroupParent: p.CgroupParent, Logger: log}.withDefaults()
	be, err := newBackend(cfg, p.Rootless)
	if err != nil {
		return nil, err
	}
	p.Backend, p.CgroupParent = cfg.Backend, cfg.CgroupParent
	return &reaper{p: p, be: be, log: log}, nil
}

func (r *reaper) cgroupsPath(id string) string {
	return (&Sandbox{cfg: Config{UseSystemd: r.p.UseSystemd, CgroupParent: r.p.CgroupParent}}).cgroupsPath(id)
}

// reapID removes everything of container id: its processes (the whole cgroup, frozen first, so a
// forking tool cannot escape), the backend's state, its cgroups, mounts at or under its I/O dir,
// the I/O dir. Best effort and idempotent: what is already gone is skipped.
func (r *reaper) reapID(id string) {
	cgroups := !r.p.UseSystemd && !r.p.Rootless
	if cgroups {
		killCgroup(r.cgroupsPath(id))
	}
	r.be.reap(id)
	if cgroups {
		for _, d := range cgroupDirs(r.cgroupsPath(id)) {
			if err := removeCgroup(d); err != nil {
				r.log.Warn("reap: remove cgroup", "dir", d, "error", err)
			}
		}
	}
	io := filepath.Join(r.p.StateRoot, id)
	unmountUnder(io) // a plain I/O dir (rootless, older owners) with mounts below it
	if err := removeIODir(io); err != nil {
		r.log.Warn("reap: remove I/O dir", "dir", io, "error", err)
	}
	if err := unmountRoot(filepath.Join(rootsDir, id)); err != nil {
		r.log.Warn("reap: remove rootfs mount", "id", id, "error", err)
	}
}

// tidy removes the cgroup parent when it is empty (a live Sandbox of another process may be
// using it: then it is not).
func (r *reaper) tidy() {
	if !r.p.UseSystemd && !r.p.Rootless {
		for _, d := range cgroupDirs("/" + r.p.CgroupParent) {
			_ = syscall.Rmdir(d)
		}
	}
}

// keeperSetup runs in the keeper process: it holds the owner's locks until the owner is gone,
// then reaps what the owner directory still lists.
func keeperSetup(raw []byte, log *slog.Logger) (func(), error) {
	var p reapParams
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(p.StateRoot) || !validOwner(p.Owner) {
		return nil, fmt.Errorf("bad parameters %q", raw)
	}
	routeLibcontainerLogs(log)
	dir, err := keeper.LockDir(filepath.Join(p.StateRoot, ownersDir, p.Owner), syscall.LOCK_SH)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil // the owner already closed its sandbox: nothing to keep
	}
	if err != nil {
		return nil, err
	}
	// The state root's shared lock too: no process starting meanwhile takes it exclusively and
	// reaps this owner's containers at the same time as the keeper does.
	root, err := os.OpenFile(filepath.Join(p.StateRoot, ".lock"), os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err == nil {
		err = syscall.Flock(int(root.Fd()), syscall.LOCK_SH)
	}
	if err != nil {
		dir.Close()
		return nil, err
	}
	return func() {
		if n := reapOwner(p.StateRoot, p.Owner, log); n > 0 {
			log.Warn("the owner of these containers is gone: reaped them", "state_root", p.StateRoot, "containers", n)
		}
		dir.Close()
		root.Close()
	}, nil
}

// reapOwner reaps the containers the owner directory lists and removes it. It returns how many
// containers it reaped. The caller holds the directory's lock or knows its owner dead.
func reapOwner(stateRoot, owner string, log *slog.Logger) int {
	defer func() {
		if r := recover(); r != nil {
			log.Error("reap panicked", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	dir := filepath.Join(stateRoot, ownersDir, owner)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	p := reapParams{StateRoot: stateRoot}
	if f, err := os.OpenFile(filepath.Join(dir, paramsFile), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0); err == nil {
		if b, err := callio.ReadBounded(f, 64<<10); err == nil {
			_ = json.Unmarshal(b, &p)
		}
		f.Close()
	}
	p.StateRoot = stateRoot
	r, err := newReaper(p, log)
	if err != nil {
		log.Warn("reap: owner parameters", "dir", dir, "error", err)
		p.Backend, p.RuntimeBinary = "", ""
		if r, err = newReaper(p, log); err != nil {
			return 0
		}
	}
	n := 0
	for _, e := range ents {
		if !validID(e.Name()) {
			continue
		}
		r.reapID(e.Name())
		n++
		_ = os.Remove(filepath.Join(dir, e.Name()))
	}
	if n > 0 {
		r.tidy()
	}
	if err := reapNet(stateRoot, owner); err != nil {
		log.Warn("reap: per-call networks", "owner", owner, "error", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		log.Warn("reap: remove owner dir", "dir", dir, "error", err)
	}
	return n
}

// reapDeadOwners reaps every owner directory under the state root that no live process holds.
func reapDeadOwners(stateRoot string, log *slog.Logger) int {
	ents, err := os.ReadDir(filepath.Join(stateRoot, ownersDir))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		name := e.Name()
		dir := filepath.Join(stateRoot, ownersDir, name)
		if tmp, ok := strings.CutPrefix(name, newPrefix); ok {
			// An owner directory being set up (renamed to its tag once locked): only a stale one
			// is debris, and it never listed a container.
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Minute && validOwner(tmp) {
				if f, err := keeper.LockDir(dir, syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
					_ = os.RemoveAll(dir)
					f.Close()
				}
			}
			continue
		}
		if !validOwner(name) {
			continue
		}
		f, err := keeper.LockDir(dir, syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil {
			continue // held: its owner or its keeper lives
		}
		n += reapOwner(stateRoot, name, log)
		f.Close()
	}
	if n > 0 {
		log.Warn("reaped containers whose owning process died", "state_root", stateRoot, "containers", n)
	}
	return n
}

// reapAll removes every container under the state root, claimed or not. The caller holds the
// state root's lock exclusively: no live Sandbox or keeper uses it.
func (s *Sandbox) reapAll() {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("reap panicked", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	// Claimed containers first, each with its owner's parameters.
	n := reapDeadOwners(s.ioRoot, s.log)
	r := &reaper{p: s.reapParams(), be: s.be, log: s.log}
	ids := map[string]bool{}
	for _, id := range s.be.ids() {
		ids[id] = true
	}
	ents, _ := os.ReadDir(s.ioRoot)
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "axocoatl-") {
			ids[e.Name()] = true
		}
	}
	if len(ids) == 0 {
		// Nothing to unmount either: every mount under the state root is on an I/O dir. (Reading
		// the mount table is the slowest step of a start with nothing to reap.)
		if n > 0 {
			r.tidy()
		}
		return
	}
	s.log.Info("reaping containers left by an earlier process", "state_root", s.ioRoot, "count", len(ids))
	for id := range ids {
		r.reapID(id)
	}
	unmountUnder(s.ioRoot)
	r.tidy()
}

// ReapDead removes what processes that died without closing their Oci sandbox left under cfg's
// state root (containers and their processes, cgroups, mounts, state and I/O dirs), without
// setting up the tier: a process that starts calls it whichever tiers it will use. It costs a
// few system calls when there is nothing to reap. New does the same.
func ReapDead(cfg Config) {
	rootless := os.Geteuid() != 0
	if cfg.StateRoot == "" && rootless {
		cfg.StateRoot = rootlessStateRoot()
	}
	cfg = cfg.withDefaults()
	root, err := filepath.Abs(cfg.StateRoot)
	if err != nil {
		return
	}
	cfg.StateRoot = root
	lock, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return // never used, or not by us
	}
	defer lock.Close()
	if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		reapDeadOwners(root, cfg.Logger)
		return
	}
	be, err := newBackend(cfg, rootless)
	if err != nil {
		reapDeadOwners(root, cfg.Logger)
		return
	}
	s := &Sandbox{cfg: cfg, log: cfg.Logger, be: be, rootless: rootless, ioRoot: root}
	s.reapAll()
}

// claim is a Sandbox's hold on its containers: its owner directory and its keeper.
type claim struct {
	tag  string
	dir  string   // {StateRoot}/.owners/{tag}
	f    *os.File // the directory, flocked LOCK_SH while the Sandbox lives
	keep *keeper.Keeper
}

// claimOwner creates the Sandbox's owner directory and starts its keeper.
func (s *Sandbox) claimOwner() error {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	tag := strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b)
	owners := filepath.Join(s.ioRoot, ownersDir)
	if err := os.MkdirAll(owners, 0o700); err != nil {
		return err
	}
	// Set up under a temporary name and renamed once locked: a process starting meanwhile must
	// never find an owner directory that is unlocked yet not dead.
	tmp := filepath.Join(owners, newPrefix+tag)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	f, err := keeper.LockDir(tmp, syscall.LOCK_SH)
	if err == nil {
		var p []byte
		p, err = json.Marshal(s.reapParams())
		if err == nil {
			err = os.WriteFile(filepath.Join(tmp, paramsFile), p, 0o600)
		}
		if err == nil {
			err = os.Rename(tmp, filepath.Join(owners, tag))
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	c := &claim{tag: tag, dir: filepath.Join(owners, tag), f: f}
	c.keep, err = keeper.Start(keeperKind, reapParams{StateRoot: s.ioRoot, Owner: tag}, s.log)
	if err != nil {
		// Still usable: only a crash would leave containers behind until the next start.
		s.log.Warn("no keeper for the Oci tier: if this process is killed its containers stay until another one starts", "error", err)
	}
	s.owner = c
	return nil
}

// mark records container id as this Sandbox's before anything of it exists.
func (s *Sandbox) mark(id string) error {
	if s.owner == nil {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(s.owner.dir, id), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("oci: claim container: %w", err)
	}
	return f.Close()
}

// unmark forgets container id once nothing of it is left.
func (s *Sandbox) unmark(id string) {
	if s.owner != nil {
		_ = os.Remove(filepath.Join(s.owner.dir, id))
	}
}

// release ends the claim at Close: the keeper reaps what destroy could not remove, if anything,
// then the claim is gone.
func (c *claim) release(log *slog.Logger, stateRoot string) {
	if c == nil {
		return
	}
	if err := c.keep.Stop(keeperStop); err != nil {
		log.Warn("Oci keeper", "error", err)
	}
	// Without a keeper (or one that failed), this process reaps its own leftovers.
	reapOwner(stateRoot, c.tag, log)
	c.f.Close()
}

// validOwner accepts what claimOwner names owner directories: {pid}-{12 hex digits}.
func validOwner(s string) bool {
	pid, r, ok := strings.Cut(s, "-")
	if _, err := strconv.Atoi(pid); err != nil || !ok || len(r) != 12 {
		return false
	}
	_, err := hex.DecodeString(r)
	return err == nil
}

// validID accepts what containerID makes: nothing that could name a path outside a directory.
func validID(id string) bool {
	return strings.HasPrefix(id, "axocoatl-") && !strings.ContainsAny(id, "/\x00") && id != "." && id != ".."
}

// killCgroup kills every process of a cgroupfs path (like "/axocoatl/id") at once: cgroup.kill on
// v2; on v1 the freezer stops them first, so none can fork while the others are being killed.
func killCgroup(path string) {
	if cgroupV2() {
		if os.WriteFile(filepath.Join("/sys/fs/cgroup", path, "cgroup.kill"), []byte("1"), 0) == nil {
			return
		}
	}
	freezer := filepath.Join("/sys/fs/cgroup/freezer", path)
	frozen := os.WriteFile(filepath.Join(freezer, "freezer.state"), []byte("FROZEN"), 0) == nil
	if frozen {
		for i := 0; i < 100; i++ {
			b, err := os.ReadFile(filepath.Join(freezer, "freezer.state"))
			if err != nil || strings.TrimSpace(string(b)) == "FROZEN" {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, d := range cgroupDirs(path) {
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
	if frozen {
		// SIGKILL is delivered once they run again.
		_ = os.WriteFile(filepath.Join(freezer, "freezer.state"), []byte("THAWED"), 0)
	}
}

// unmountUnder detaches every mount strictly below dir, deepest first.
func unmountUnder(dir string) {
	b, err := hostMountinfo()
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mps[i], syscall.MNT_DETACH)
	}
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
