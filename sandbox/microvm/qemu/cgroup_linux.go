package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroupRoot is where the cgroup hierarchies are mounted (a variable for tests).
var cgroupRoot = "/sys/fs/cgroup"

// cgroupLimits are one VMM's resource limits.
type cgroupLimits struct {
	MemoryBytes int64
	Pids        int
	// CPUQuotaUS per cpuPeriodUS of CPU time (0: no limit).
	CPUQuotaUS int64
	// CPUWeight is the number of tasks' worth of CPU share the VMM gets under contention (its
	// vCPUs and QEMU's main loop; 0: the default, one).
	CPUWeight int
}

const cpuPeriodUS = 100000

// cgroupPrefix starts the name of every VMM cgroup (pruneStale removes only such).
const cgroupPrefix = "axocoatl-vm-"

// vmCgroup is the cgroup of one VMM, a child of this process's own cgroup ("axocoatl-vm-<name>"),
// so that the limits of whatever runs the daemon still apply above it. On cgroup v1 it is one
// directory per controller (memory, pids, cpu); on v2 one directory.
//
// There is no shared parent for the VMMs: the CPU scheduler weighs sibling cgroups against each
// other, and one "axocoatl-vm" parent would squeeze every VM together into the share of a single
// task (measured: with ~25 runnable tasks on 2 cores, VMs stopped booting within a minute). Each
// VMM instead weighs as much as its vCPUs plus QEMU's main loop would as threads.
type vmCgroup struct {
	dirs []string // created directories, one per hierarchy
	v2   bool
}

// newCgroup creates the VMM's cgroup with its limits. The process is added with add (v1) or
// started inside it with CLONE_INTO_CGROUP through fd (v2).
func newCgroup(name string, l cgroupLimits) (*vmCgroup, error) {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return newCgroupV2(name, l)
	}
	return newCgroupV1(name, l)
}

// selfCgroups maps each v1 controller (and "" for v2) to this process's cgroup path.
func selfCgroups() (map[string]string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, sc.Err()
}

func newCgroupV1(name string, l cgroupLimits) (*vmCgroup, error) {
	self, err := selfCgroups()
	if err != nil {
		return nil, err
	}
	cg := &vmCgroup{}
	files := []struct {
		ctrl  string
		kv    [][2]string
		mount string
	}{
		{"memory", [][2]string{{"memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)}}, "memory"},
		{"pids", [][2]string{{"pids.max", strconv.Itoa(l.Pids)}}, "pids"},
		{"cpu", [][2]string{{"cpu.shares", strconv.Itoa(1024 * max(l.CPUWeight, 1))},
			{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)}, {"cpu.cfs_quota_us", strconv.FormatInt(l.CPUQuotaUS, 10)}}, "cpu"},
	}
	for _, f := range files {
		if f.ctrl == "cpu" && l.CPUQuotaUS <= 0 {
			continue
		}
		base, ok := self[f.ctrl]
		if !ok {
			cg.remove()
			return nil, fmt.Errorf("cgroup v1: this process is in no %s cgroup", f.ctrl)
		}
		parent := filepath.Join(cgroupRoot, f.mount, base)
		pruneStale(parent)
		dir := filepath.Join(parent, cgroupPrefix+name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			cg.remove()
			return nil, fmt.Errorf("cgroup v1: %w", err)
		}
		cg.dirs = append(cg.dirs, dir)
		for _, kv := range f.kv {
			if err := os.WriteFile(filepath.Join(dir, kv[0]), []byte(kv[1]), 0); err != nil {
				cg.remove()
				return nil, fmt.Errorf("cgroup v1: %w", err)
			}
		}
	}
	return cg, nil
}

func newCgroupV2(name string, l cgroupLimits) (*vmCgroup, error) {
	self, err := selfCgroups()
	if err != nil {
		return nil, err
	}
	want := []string{"+memory", "+pids"}
	if l.CPUQuotaUS > 0 {
		want = append(want, "+cpu")
	}
	// Under this process's own cgroup when its controllers can be delegated there (v2 refuses
	// that for a non-root cgroup holding processes), else beside it.
	own := filepath.Join(cgroupRoot, self[""])
	var parent string
	for _, base := range []string{own, filepath.Dir(own)} {
		if !strings.HasPrefix(base, cgroupRoot) {
			continue
		}
		if enableControllers(base, want) == nil {
			parent = base
			break
		}
	}
	if parent == "" {
		return nil, errors.New("cgroup v2: cannot delegate memory, pids and cpu to a child of this process's cgroup or its parent")
	}
	pruneStale(parent)
	dir := filepath.Join(parent, cgroupPrefix+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup v2: %w", err)
	}
	cg := &vmCgroup{dirs: []string{dir}, v2: true}
	kv := [][2]string{{"memory.max", strconv.FormatInt(l.MemoryBytes, 10)}, {"memory.swap.max", "0"}, {"pids.max", strconv.Itoa(l.Pids)}}
	if l.CPUQuotaUS > 0 {
		kv = append(kv, [2]string{"cpu.max", fmt.Sprintf("%d %d", l.CPUQuotaUS, cpuPeriodUS)},
			[2]string{"cpu.weight", strconv.Itoa(100 * max(l.CPUWeight, 1))})
	}
	for _, f := range kv {
		if err := os.WriteFile(filepath.Join(dir, f[0]), []byte(f[1]), 0); err != nil && !(f[0] == "memory.swap.max" && errors.Is(err, os.ErrNotExist)) {
			cg.remove()
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
	}
	return cg, nil
}

// staleAfter: an empty VMM cgroup older than this was left by a VMM whose daemon died (a
// VMM dies with its daemon, its cgroup stays); a cgroup being set up is milliseconds old.
const staleAfter = time.Minute

// pruneStale removes the empty VMM cgroups under parent left by daemons that died. rmdir fails on
// a cgroup that still holds a process, so a live VMM's cgroup is never removed.
func pruneStale(parent string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), cgroupPrefix) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleAfter {
			_ = os.Remove(filepath.Join(parent, e.Name()))
		}
	}
}

func enableControllers(dir string, want []string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(want, " ")), 0)
}

// fd opens the v2 cgroup directory for CLONE_INTO_CGROUP (-1 on v1).
func (c *vmCgroup) fd() (*os.File, error) {
	if !c.v2 {
		return nil, nil
	}
	return os.Open(c.dirs[0])
}

// add moves pid into the cgroup (v1; on v2 the process starts inside it).
func (c *vmCgroup) add(pid int) error {
	if c.v2 {
		return nil
	}
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("cgroup: add the VMM to %s: %w", d, err)
		}
	}
	return nil
}

// remove deletes the cgroup once its processes are gone (the kernel frees a cgroup a moment after
// its last process is reaped, so rmdir is retried briefly).
func (c *vmCgroup) remove() {
	for _, d := range c.dirs {
		for i := 0; i < 50; i++ {
			if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}
