package microvm

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const noFollow = syscall.O_NOFOLLOW

// owner identifies a process by pid and start time (pids are reused).
func selfOwner() string {
	return fmt.Sprintf("%d %s", os.Getpid(), startTime(os.Getpid()))
}

func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// Field 22 is starttime; field 2 (comm) may contain spaces, so count after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func writeOwner(dir string) error {
	return os.WriteFile(filepath.Join(dir, "owner"), []byte(selfOwner()+"\n"), 0o600)
}

func alive(owner string) bool {
	f := strings.Fields(owner)
	if len(f) != 2 {
		return false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return false
	}
	return startTime(pid) == f[1]
}

// reapOrphans kills the VMMs and removes the run dirs of processes that died without Close.
func reapOrphans(root string, log *slog.Logger) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		owner, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err == nil && alive(strings.TrimSpace(string(owner))) {
			continue
		}
		if err != nil {
			// A dir without owner may be one being created right now: leave young ones.
			if fi, serr := os.Stat(dir); serr != nil || fi.ModTime().After(timeNow().Add(-staleAfter)) {
				continue
			}
		}
		vms, _ := filepath.Glob(filepath.Join(dir, "*", "vmm.pid"))
		for _, pf := range vms {
			b, err := os.ReadFile(pf)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 1 {
				continue
			}
			// Kill only a VMM whose command line names this run dir (the pid may be reused).
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && bytes.Contains(cmdline, []byte(filepath.Dir(pf))) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				log.Info("reaped orphan VMM", "pid", pid, "dir", filepath.Dir(pf))
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("remove orphan run dir", "dir", dir, "err", err)
		}
	}
}

var timeNow = time.Now

const staleAfter = time.Minute
