package firecracker

import "syscall"

// sysProcAttr makes the VMM die with the host process (SIGKILL on parent death), so a crashed
// daemon leaves no VM running, and puts it in its own process group so terminal signals meant for
// the daemon do not reach it first.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
