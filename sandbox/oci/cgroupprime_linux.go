package oci

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Why priming exists: moving a process into a cgroup (what every container start does, writing
// the init's pid to cgroup.procs) takes the kernel's global cgroup_threadgroup_rwsem for writing.
// Unless the host mounted a cgroup hierarchy with "favordynmods", that percpu rwsem first waits
// for a full RCU grace period, 5–15 ms on this kind of machine, during which libcontainer's
// Start (and the init it spawned) sit idle: it was the largest single item of a cold call. The
// grace period is shared: a writer arriving while one is in progress, or within one grace period
// after the last writer left, does not wait for another. So the sandbox starts a no-op migration
// of its own — this process's pid written to the cgroup.procs of the cgroup it already is in —
// on a goroutine as soon as a cold call begins (or earlier: PrimeCgroups); by the time
// libcontainer migrates the init, the grace period has mostly or entirely elapsed.
//
// The write moves this process into the cgroup it is in already, so it changes nothing; it is
// skipped when this process cannot write there (rootless). The one race, another agent moving
// this process to another cgroup between the read of /proc/self/cgroup and the write, is the
// same a cgroup-unaware process would have with that agent's own read-modify-write.

var (
	// primeFile is the cgroup.procs of this process's own cgroup ("" when none is writable).
	primeFile = sync.OnceValue(ownCgroupProcs)
	// priming is true while a priming write is in flight: one at a time is enough.
	priming atomic.Bool
)

// PrimeCgroups starts, on a goroutine of its own, the kernel's wait that precedes the next
// container's cgroup migration (an RCU grace period, 5–15 ms here; see the comment above), so that
// it overlaps with whatever the process does next. A cold call does this itself when it begins;
// a short-lived process about to make one (a CLI "run") gains a few more milliseconds by calling
// PrimeCgroups as early as it can. It never blocks, never fails and changes nothing else: this
// process is written into the cgroup it is already in. It does nothing where that cgroup is not
// writable (rootless) and while an earlier priming is still waiting.
func PrimeCgroups() {
	f := primeFile()
	if f == "" || !priming.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer priming.Store(false)
		fd, err := syscall.Open(f, syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		_, _ = syscall.Write(fd, []byte(strconv.Itoa(os.Getpid())))
		_ = syscall.Close(fd)
	}()
}

// ownCgroupProcs finds a cgroup.procs file of this process's own cgroup that this process may
// write: on cgroup v1 (and hybrid) in the pids, memory, devices or freezer hierarchy, on v2 in
// the unified one.
func ownCgroupProcs() string {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	defer f.Close()
	own := map[string]string{} // controller ("" for v2) -> path
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "ID:controllers:path"; v2 is "0::path".
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			own[c] = parts[2]
		}
	}
	try := []string{"pids", "memory", "devices", "freezer"}
	if cgroupV2() {
		try = []string{""}
	}
	for _, c := range try {
		p, ok := own[c]
		if !ok || !filepath.IsAbs(p) || strings.Contains(p, "..") {
			continue
		}
		procs := filepath.Join("/sys/fs/cgroup", c, p, "cgroup.procs")
		if syscall.Access(procs, 2 /* W_OK */) == nil {
			return procs
		}
	}
	return ""
}
