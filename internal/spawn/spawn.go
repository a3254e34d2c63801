// Package spawn starts child processes whose lifetime must follow the daemon's, not the OS
// thread's.
//
// Linux sends a child's parent-death signal (SysProcAttr.Pdeathsig) when the *thread* that forked
// it exits, not when the process does. Go forks from whatever OS thread the calling goroutine is
// on, and the runtime terminates a thread whenever a goroutine that locked it (libcontainer locks
// one per container start and never unlocks it) returns. A VMM started with Pdeathsig from an
// ordinary goroutine is therefore killed at a random later moment, when that thread happens to be
// reused and ended. Start runs every fork on one thread that is locked for the life of the process
// and never exits, so the signal fires only when the daemon itself dies.
package spawn

import (
	"os/exec"
	"runtime"
	"sync"
)

type request struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	once     sync.Once
	requests chan request
)

// thread is the goroutine that owns the forking thread: it locks it and never returns, so the
// runtime never ends that thread.
func thread() {
	runtime.LockOSThread()
	for r := range requests {
		r.done <- r.cmd.Start()
	}
}

// Start starts cmd (cmd.Start) on the process's dedicated forking thread and returns its error.
// Starts are serialized there; each costs one fork+exec (about a millisecond).
func Start(cmd *exec.Cmd) error {
	once.Do(func() {
		requests = make(chan request)
		go thread()
	})
	r := request{cmd: cmd, done: make(chan error, 1)}
	requests <- r
	return <-r.done
}
