package qemu

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// unsupportedOS is why this OS cannot run the driver ("": it can).
const unsupportedOS = ""

// procAttr is a VMM's process attributes. Pdeathsig: a crashed host takes its VMs along; Setpgid
// keeps terminal signals away. The signal follows the thread that forks, hence spawn.Start; and
// the kernel clears it when a process changes its own uid, which is why QEMU starts as its uid
// (Credential) instead of dropping root itself with -runas.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

// setCgroupFD starts the process in the cgroup open as fd (clone3 CLONE_INTO_CGROUP).
func setCgroupFD(attr *syscall.SysProcAttr, fd int) { attr.UseCgroupFD, attr.CgroupFD = true, fd }

// socketPair returns the host's end (a net.Conn) and the VMM's end (a file to pass) of a
// connected unix stream socket pair.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("qemu: socketpair: %w", err)
	}
	hf := os.NewFile(uintptr(fds[0]), "host")
	defer hf.Close()
	c, err := net.FileConn(hf)
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("qemu: socketpair: %w", err)
	}
	return c, os.NewFile(uintptr(fds[1]), "vmm"), nil
}
