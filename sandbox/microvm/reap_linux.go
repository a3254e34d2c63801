package microvm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/internal/keeper"
)

// A Sandbox's VMs live in its private run dir ({RunDir}/p…/, one subdirectory per VM with the
// VMM's pidfile, sockets, copies and snapshots). The Sandbox holds a shared flock on that dir for
// its life, and so does its keeper (package internal/keeper): when the Sandbox's process dies,
// however it dies, the keeper kills the VMMs and removes the dir (reapRunDir). A process that
// starts (New, and ReapDead, which axoiso.New calls whichever tiers it will use) reaps the run dirs
// nobody holds any more whose owner process is gone (reapOrphans), with the same reapRunDir.

const keeperKind = "vm"

func init() { keeper.Hook(keeperKind, keeperSetup) }

type keeperParams struct {
	Dir string `json:"dir"`
}

// keeperSetup runs in the keeper process: it holds the run dir's lock until the owner is gone,
// then reaps the dir.
func keeperSetup(raw []byte, log *slog.Logger) (func(), error) {
	var p keeperParams
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(p.Dir) || filepath.Clean(p.Dir) != p.Dir {
		return nil, fmt.Errorf("bad parameters %q", raw)
	}
	f, err := keeper.LockDir(p.Dir, syscall.LOCK_SH)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil // the owner already closed its sandbox: nothing to keep
	}
	if err != nil {
		return nil, err
	}
	return func() {
		if n := reapRunDir(p.Dir, log); n > 0 {
			log.Warn("the owner of these VMs is gone: killed them", "dir", p.Dir, "vmms", n)
		}
		f.Close()
	}, nil
}

// claimRunDir locks the Sandbox's new run dir, records its owner and starts its keeper.
func claimRunDir(dir string, log *slog.Logger) (*os.File, *keeper.Keeper, error) {
	f, err := keeper.LockDir(dir, syscall.LOCK_SH)
	if err != nil {
		return nil, nil, err
	}
	if err := writeOwner(dir); err != nil {
		f.Close()
		return nil, nil, err
	}
	k, err := keeper.Start(keeperKind, keeperParams{Dir: dir}, log)
	if err != nil {
		// Still usable: only a crash would leave VMs behind until the next start.
		log.Warn("no keeper for the microVM tier: if this process is killed its VMs stay until another one starts", "error", err)
	}
	return f, k, nil
}

// owner identifies a process by pid and start time (pids are reused).
func selfOwner() string {
	return fmt.Sprintf("%d %s", os.Getpid(), startTime(os.Getpid()))
}

// startTime is the process's start time, "" when it does not exist or has exited (a zombie).
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
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
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

// ReapDead kills the VMMs and removes the run dirs under root (Config.RunDir) of processes that
// died without Close and whose keeper is gone too. It costs a directory read when there is
// nothing to reap; New does the same.
func ReapDead(root string, log *slog.Logger) {
	if root == "" {
		root = DefaultRunDir
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reapOrphans(root, log)
}

// reapOrphans reaps the run dirs under root that no live process holds.
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
		f, err := keeper.LockDir(dir, syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil {
			continue // its owner or its keeper holds it
		}
		owner, err := os.ReadFile(filepath.Join(dir, "owner"))
		skip := err == nil && alive(strings.TrimSpace(string(owner))) // an owner that takes no lock
		if err != nil {
			// A dir without owner may be one being created right now: leave young ones.
			if fi, serr := os.Stat(dir); serr != nil || fi.ModTime().After(timeNow().Add(-staleAfter)) {
				skip = true
			}
		}
		if !skip {
			if n := reapRunDir(dir, log); n > 0 {
				log.Warn("killed VMs whose owning process died", "dir", dir, "vmms", n)
			}
		}
		f.Close()
	}
}

// reapRunDir kills the VMMs a run dir's pidfiles name and removes the dir (snapshots included).
// It returns how many VMMs it killed.
func reapRunDir(dir string, log *slog.Logger) int {
	n := 0
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
			n++
			log.Info("reaped orphan VMM", "pid", pid, "dir", filepath.Dir(pf))
		}
	}
	// The VMMs' taps and namespaces go with them; the rules stay until their table is removed.
	reapNet(dir)
	if err := os.RemoveAll(dir); err != nil {
		log.Warn("remove orphan run dir", "dir", dir, "err", err)
	}
	return n
}

var timeNow = time.Now

const staleAfter = time.Minute
