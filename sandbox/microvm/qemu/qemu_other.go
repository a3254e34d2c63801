//go:build !linux

package qemu

import (
	"errors"
	"net"
	"os"
	"syscall"
)

const unsupportedOS = "the QEMU microvm driver needs Linux"

func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func setCgroupFD(*syscall.SysProcAttr, int) {}

func socketPair() (net.Conn, *os.File, error) { return nil, nil, errors.New("qemu: " + unsupportedOS) }
