// Package keeper ties what a sandbox creates outside its own process (containers, VMs, their
// cgroups, mounts, state and run directories) to the life of that process, whatever ends it:
// SIGKILL and the OOM killer included, which leave the process no chance to clean up.
//
// Something else must clean up then, so each sandbox starts a keeper: this same binary re-executed
// (as libcontainer re-executes it as a container init; test binaries too) in a session of its
// own, holding the read end of a pipe whose only write end the sandbox holds. When the sandbox's
// process dies the kernel closes that write end, the keeper reads EOF and runs the tier's reaping
// function on what the sandbox left, then exits. A sandbox closed normally closes the pipe itself
// (Stop): the keeper then finds nothing left and exits.
//
// The tier that owns a kind of keeper registers it from an init function with Hook; the keeper
// process never gets past that init (the tier's dependencies are initialised by then, main and
// the tests never run). Register tiers with distinct kinds: one keeper runs one tier's reaping.
//
// A keeper is a safety net, not the only one: a keeper can be killed with its owner (kill -9 of
// the process group, a cgroup being torn down), so each tier also reaps, when a process starts,
// what dead owners left. Both paths call the same reaping function of the tier.
package keeper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

const (
	// arg is os.Args[1] of a keeper process; os.Args[2] is its kind. Both it and envKind must be
	// present (as for containerinit), so a CLI subcommand of that name is never taken over.
	arg     = "axocoatl-keeper"
	envKind = "_AXOCOATL_KEEPER"
	envLog  = "_AXOCOATL_KEEPER_LOG"
	// maxParams bounds the parameter line a keeper reads.
	maxParams = 1 << 20
)

// Setup runs in the keeper process with the parameters its owner gave Start. It takes what the
// keeper must hold while its owner lives (the locks that tell other processes that the owner's
// state is in use) and returns the reaping to run once the owner is gone. An error ends the
// keeper without reaping.
type Setup func(params []byte, log *slog.Logger) (reap func(), err error)

// IsKeeper reports whether this process is a keeper of kind.
func IsKeeper(kind string) bool {
	return len(os.Args) > 2 && os.Args[1] == arg && os.Args[2] == kind && os.Getenv(envKind) == kind
}

// Hook makes this process a keeper of kind when Start started it as one: it runs setup, waits for
// its owner's end and reaps, and exits; in any other process it does nothing. Call it from an
// init function of the package that owns kind.
func Hook(kind string, setup Setup) {
	if !IsKeeper(kind) {
		return
	}
	os.Exit(serve(os.NewFile(3, "keeper-pipe"), setup))
}

func serve(pipe *os.File, setup Setup) int {
	// Terminal and service-manager signals are for the owner: the keeper's job starts when the
	// owner is gone, however that happens. Only SIGKILL ends it early.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	var level slog.Level
	_ = level.UnmarshalText([]byte(os.Getenv(envLog)))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("keeper", os.Args[2], "owner", os.Getppid())
	r := bufio.NewReader(io.LimitReader(pipe, maxParams))
	line, err := r.ReadBytes('\n')
	if err != nil {
		// The owner died before it finished starting us: what it created is reaped by the next
		// process that starts on the same directories.
		log.Warn("keeper: no parameters from the owner", "error", err)
		return 1
	}
	reap, err := setup(bytes.TrimSpace(line), log)
	if err != nil {
		log.Warn("keeper: set-up failed; this owner's sandboxes are reaped only by the next process that starts", "error", err)
		return 1
	}
	// Block until every copy of the write end is closed: the owner exited, was killed, or Stop.
	_, _ = io.Copy(io.Discard, pipe)
	reap()
	return 0
}

// Keeper is the owner's handle on a running keeper.
type Keeper struct {
	kind   string
	log    *slog.Logger
	params []byte

	mu      sync.Mutex // protects w, cmd, exited, stopped, restarts
	w       *os.File   // the pipe's write end: only this process holds it
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd was waited for
	stopped bool
	// restarts counts keepers started again after one died while its owner lived.
	restarts int
}

// maxRestarts bounds how often a keeper killed while its owner lives is replaced.
const maxRestarts = 5

// Start starts a keeper of kind (registered with Hook by the package that calls Start) that runs
// kind's reaping with params (JSON-encoded) when this process ends or Stop is called. It returns
// once the keeper process exists (it may still be initialising: it reads EOF whenever it gets
// there). The keeper logs to this process's stderr at the level of log (Warn when log is nil).
func Start(kind string, params any, log *slog.Logger) (*Keeper, error) {
	p, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("keeper %s: parameters: %w", kind, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Keeper{kind: kind, log: log, params: append(p, '\n')}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.startLocked(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Keeper) startLocked() error {
	r, w, err := os.Pipe() // both ends close-on-exec: no child of ours inherits the write end
	if err != nil {
		return fmt.Errorf("keeper %s: %w", k.kind, err)
	}
	defer r.Close()
	// The parameters fit in the pipe's buffer: written before the keeper runs, they are there
	// even if this process dies at once.
	if len(k.params) > 60<<10 {
		w.Close()
		return fmt.Errorf("keeper %s: parameters of %d bytes", k.kind, len(k.params))
	}
	if _, err := w.Write(k.params); err != nil {
		w.Close()
		return fmt.Errorf("keeper %s: %w", k.kind, err)
	}
	cmd := exec.Command("/proc/self/exe", arg, k.kind)
	cmd.Env = append(os.Environ(), envKind+"="+k.kind, envLog+"="+levelOf(k.log).String())
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = detached()
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("keeper %s: start: %w", k.kind, err)
	}
	exited := make(chan struct{})
	k.w, k.cmd, k.exited = w, cmd, exited
	go k.wait(cmd, w, exited)
	return nil
}

// wait collects the keeper's exit; a keeper that dies while its owner lives is replaced.
func (k *Keeper) wait(cmd *exec.Cmd, w *os.File, exited chan struct{}) {
	err := cmd.Wait()
	close(exited)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped || k.w != w {
		return
	}
	w.Close()
	k.w = nil
	if k.restarts >= maxRestarts {
		k.log.Error("keeper died again; if this process dies now its sandboxes are reaped only by the next process that starts", "kind", k.kind, "error", err)
		return
	}
	k.restarts++
	k.log.Warn("keeper died while its owner lives; starting another", "kind", k.kind, "error", err)
	if err := k.startLocked(); err != nil {
		k.log.Error("keeper could not be restarted", "kind", k.kind, "error", err)
	}
}

// Stop tells the keeper its owner is done (everything it kept was torn down): the keeper reaps
// what may be left and exits. Stop waits for that, at most timeout. Idempotent.
func (k *Keeper) Stop(timeout time.Duration) error {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return nil
	}
	k.stopped = true
	w, exited := k.w, k.exited
	k.w = nil
	k.mu.Unlock()
	if w != nil {
		w.Close()
	}
	select {
	case <-exited:
		return nil
	case <-time.After(timeout):
		return errors.New("keeper " + k.kind + ": still running after its owner stopped it")
	}
}

// PID is the keeper's process id (for tests and logs); 0 when none runs.
func (k *Keeper) PID() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cmd == nil || k.cmd.Process == nil {
		return 0
	}
	return k.cmd.Process.Pid
}

func levelOf(log *slog.Logger) slog.Level {
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if log.Enabled(context.Background(), l) {
			return l
		}
	}
	return slog.LevelError
}
