// Package nsthread runs code inside network namespaces and makes new ones, moving only the calling
// OS thread: what the per-call networks (internal/callnet) and the tests' fake internet
// (internal/fakenet) both need.
package nsthread

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread that has joined the network namespace ns (an open nsfs file), then
// returns the thread to this process's namespace. Only the calling thread moves; paths under
// /proc/sys/net and /proc/thread-self/net then show ns. If the thread cannot return, it stays
// locked, so the Go runtime ends it rather than reusing it in the wrong namespace.
func Do(ns int, f func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("return to the host network namespace: %w", err) // thread stays locked: it dies
	}
	runtime.UnlockOSThread()
	return ferr
}

// New creates a network namespace owned by this process's user namespace and returns it as an
// open file; setup (when not nil) runs on a thread inside it first, before any link but lo
// exists, and its error fails New. The namespace lives as long as the file or a process in it.
func New(setup func() error) (*os.File, error) {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer self.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("unshare a network namespace: %w", err)
	}
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err == nil && setup != nil {
		err = setup()
	}
	if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
		if ns != nil {
			ns.Close()
		}
		return nil, fmt.Errorf("return to the host network namespace: %w", rerr) // thread stays locked: it dies
	}
	runtime.UnlockOSThread()
	if err != nil {
		if ns != nil {
			ns.Close()
		}
		return nil, err
	}
	return ns, nil
}
