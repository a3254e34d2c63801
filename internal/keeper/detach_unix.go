//go:build unix

package keeper

import "syscall"

// detached starts the keeper in a session of its own: no terminal signal (^C to the owner's
// process group) reaches it.
func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
