// Command axoiso-guest is the guest agent: PID 1 of a microVM of the Firecracker tier.
//
// It mounts what it needs, loads the kernel modules named on the command line, opens the host
// channel (a serial port set raw, or a vsock listener), says Ready, runs one Request as an
// unprivileged user and answers one Response, then restarts the machine (which the VMM turns into
// an exit: QEMU runs with -no-reboot). Build it static: CGO_ENABLED=0 go build.
//
// Kernel command line: axocoatl.chan=ttyS1 | vsock:PORT; axocoatl.modules=mod1,mod2,... (loaded
// in order from /lib/modules/axocoatl/NAME.ko).
package main

func main() { run() }
