// The listings here read /proc and /sys/fs/cgroup: on other systems they find nothing.

package testutil

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PidsInCgroups lists the processes in the cgroup directories dirs and every cgroup below them,
// each once: what a container or VM test checks is gone after a call, a Close or a reap.
func PidsInCgroups(dirs ...string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// KeepersOf lists the pids of the keeper processes (internal/keeper, "axocoatl-keeper" in their
// command line) whose parent is pid.
func KeepersOf(pid int) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		st, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// The fields after the command name, which may hold spaces and parentheses.
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(pid) {
			continue
		}
		if cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline")); strings.Contains(string(cmd), "axocoatl-keeper") {
			k, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			out = append(out, k)
		}
	}
	return out
}

// QemuPIDs lists the qemu-system processes whose command line names dir and that have not
// exited (zombies, exited but not yet waited for, are left out).
func QemuPIDs(dir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "qemu-system") || !strings.Contains(string(b), dir) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat")); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && strings.HasPrefix(string(st[i+1:]), " Z") {
				continue
			}
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		pids = append(pids, pid)
	}
	return pids
}
