package firecracker

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// kvmAPIVersion is the only KVM API version there has ever been (KVM_GET_API_VERSION).
const kvmAPIVersion = 12

// kvmGetAPIVersion is _IO(KVMIO, 0x00).
const kvmGetAPIVersion = 0xAE00

// checkKVM asks the opened device for its API version, so a stale device node or a non-KVM
// character device is not mistaken for a working KVM.
func checkKVM(f *os.File) error {
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("KVM API version %d, want %d", v, kvmAPIVersion)
	}
	return nil
}
