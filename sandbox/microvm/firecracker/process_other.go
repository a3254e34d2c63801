//go:build !linux

package firecracker

import "syscall"

// sysProcAttr: Firecracker runs on Linux only; elsewhere Probe reports it unavailable.
func sysProcAttr() *syscall.SysProcAttr { return nil }
