//go:build !linux

package ocispec

import specs "github.com/opencontainers/runtime-spec/specs-go"

// DefaultSeccomp is nil off Linux: seccomp and the containers it confines exist only there
// (seccomp_linux.go). The package builds everywhere so that the library does.
func DefaultSeccomp() *specs.LinuxSeccomp { return nil }
