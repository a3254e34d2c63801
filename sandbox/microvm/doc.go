// Package microvm is the Firecracker tier (isolation.TierMicroVM): Python, shell and arbitrary
// tools run in a single-use microVM whose PID 1 is the guest agent (cmd/axoiso-guest), spoken to
// with the framed protocol of internal/guest.
//
// Two VMM backends implement Driver: Firecracker (sandbox/microvm/firecracker) where /dev/kvm and
// a firecracker binary exist, QEMU -M microvm (sandbox/microvm/qemu) otherwise, with KVM when
// present and TCG when not. The guest kernel and root come from Prepare (axoiso vm prepare).
package microvm
