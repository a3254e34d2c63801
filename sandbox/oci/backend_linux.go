package oci

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// backend creates containers. Implementations: libcontainer (embedded) and runtimeBinary (crun,
// runc). Safe for concurrent use.
type backend interface {
	name() string
	// create makes container id from spec. out receives the process's stdout and stderr. The
	// container must not run the process before start. On error nothing of it remains. ns, when
	// set, is the user namespace (with the spec's mappings) to join.
	create(id string, spec *specs.Spec, stdout, stderr io.Writer, ns *slotNS) (instance, error)
	// reap removes what a crashed earlier process left of container id (best effort).
	reap(id string)
	// stateDirs lists the ids this backend has state for under its root.
	ids() []string
	// canPool is true when create leaves a container whose init waits to be started.
	canPool() bool
}

// instance is one container. Methods other than kill are not called concurrently.
type instance interface {
	// start runs the process.
	start() error
	// wait blocks until the process exits and returns its wait status as an exit code (128+n
	// for signal n).
	wait() (int, error)
	// kill sends SIGKILL to every process of the container; safe to call concurrently with wait.
	kill()
	// oomKilled reports whether the kernel's OOM killer killed a process in the container's
	// memory cgroup. Called after wait, before destroy.
	oomKilled() bool
	// destroy removes the container (processes, cgroups, state). Idempotent.
	destroy() error
}

func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// cgroupV2 is true on a unified (v2-only) host.
func cgroupV2() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// oomKillCount reads the number of OOM kills in a memory cgroup directory: v2 memory.events
// "oom_kill N", v1 memory.oom_control "oom_kill N" (kernel ≥ 4.13).
func oomKillCount(memDir string) int {
	if memDir == "" {
		return 0
	}
	for _, f := range []string{"memory.events", "memory.oom_control"} {
		b, err := os.ReadFile(filepath.Join(memDir, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), " ")
			if ok && k == "oom_kill" {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
	}
	return 0
}

// cgroupDirs lists the directories a cgroupfs path (like "/axocoatl/id") has on this host: one per
// mounted v1 hierarchy plus the unified one, or the v2 one.
func cgroupDirs(path string) []string {
	if cgroupV2() {
		return []string{filepath.Join("/sys/fs/cgroup", path)}
	}
	ents, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil
	}
	var dirs []string
	for _, e := range ents {
		fi, err := os.Lstat(filepath.Join("/sys/fs/cgroup", e.Name()))
		if err != nil || !fi.IsDir() {
			continue // v1 co-mounted controllers appear as symlinks (cpu -> cpu,cpuacct)
		}
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name(), path))
	}
	return dirs
}

// memoryCgroupDir is the memory controller's directory for a cgroupfs path.
func memoryCgroupDir(path string) string {
	if path == "" {
		return "" // no cgroup of its own (rootless): never the root's counters
	}
	if cgroupV2() {
		return filepath.Join("/sys/fs/cgroup", path)
	}
	return filepath.Join("/sys/fs/cgroup/memory", path)
}

// removeCgroup kills every process in a cgroup directory tree and removes it, deepest first.
func removeCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(filepath.Join(p, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		return nil
	})
	// Deepest first: collect, then remove in reverse. rmdir can fail with EBUSY while killed
	// processes are still exiting; retry briefly.
	var all []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			all = append(all, p)
		}
		return nil
	})
	for i := len(all) - 1; i >= 0; i-- {
		if err := rmdirRetry(all[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func rmdirRetry(p string) error {
	var err error
	for i := 0; i < 200; i++ {
		err = syscall.Rmdir(p)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		sleepBrief()
	}
	return fmt.Errorf("rmdir %s: %w", p, err)
}
