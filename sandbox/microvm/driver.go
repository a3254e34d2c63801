package microvm

import (
	"context"
	"io"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/callnet"
)

// Driver is one VMM backend (QEMU microvm, Firecracker). The microvm Sandbox picks the first
// driver whose Probe says Available, boots single-use machines with it and speaks the guest
// protocol (internal/guest) over the channel the driver hands back. A driver knows nothing of tools,
// calls or the protocol's messages: it starts, connects, pauses/snapshots and kills VMMs.
//
// Drivers are safe for concurrent use.
type Driver interface {
	// Name is the backend name reported in Outcome.Backend and Availability.Backend
	// ("qemu-microvm-tcg", "qemu-microvm-kvm", "firecracker").
	Name() string
	// Probe says whether this backend can run on this host (binaries, /dev/kvm), with a reason and
	// a fix when it cannot. It does not check the guest image (the Sandbox does).
	Probe(ctx context.Context) isolation.Availability
	// GuestChannel names the channel the agent must open, put by the Sandbox on the kernel
	// command line as "axocoatl.chan=<value>": "vport0p1" for the first port of a
	// virtio-console device (QEMU microvm; the agent then loads virtio_mmio and virtio_console,
	// passing them their "<module>.<param>=" command line arguments), "ttyS1" for a second 16550
	// UART (needs no kernel module) or "vsock:<port>" for a virtio-vsock listener on that port
	// (Firecracker, port 1024; the agent then loads the virtio-mmio and vsock modules).
	GuestChannel() string
	// Boot starts a fresh VM from spec and returns once the VMM process runs. It does not wait for
	// the guest agent: the caller reads the agent's READY frame from Machine.Channel. On error
	// nothing the call started is left running (the caller still removes spec.RunDir).
	Boot(ctx context.Context, spec BootSpec) (Machine, error)
}

// Snapshotter is implemented by drivers that can snapshot a paused VM and start clones of it.
type Snapshotter interface {
	// Snapshot pauses m (its agent is at READY and idle) and writes its full state under dir
	// (created by the caller, owned by the driver's files from then on). m stays paused; the
	// caller usually Kills it afterwards. The returned Snapshot is what Restore needs.
	Snapshot(ctx context.Context, m Machine, dir string) (Snapshot, error)
	// Restore starts a new VM from snap with spec's RunDir and ID (spec's Kernel, Initrd,
	// RootDrive, VCPUs and MemoryMB must equal the snapshotted machine's) and resumes it. The
	// clone's agent is waiting for a request; it does not send an unsolicited READY on serial
	// channels: the host sends the guest protocol's Hello and waits for the matching READY.
	Restore(ctx context.Context, snap Snapshot, spec BootSpec) (Machine, error)
}

// Snapshot names the files of one snapshot. Files stay until the Sandbox removes Dir.
type Snapshot struct {
	// Dir holds every file of the snapshot.
	Dir string
	// State is the VMM state file (QEMU: the migration stream; Firecracker: snapshot_path).
	State string
	// Memory is the guest memory file (Firecracker mem_file_path; "" for QEMU, whose migration
	// stream includes memory).
	Memory string
}

// BootSpec is everything a driver needs to start one VM. Paths are absolute host paths; none of
// them comes from a tool.
type BootSpec struct {
	// ID names the VM in logs and process titles (letters, digits, '-'; at most 64 bytes).
	ID string
	// RunDir is a private, empty directory for this VM's sockets, pidfile, logs and copies. The
	// driver writes a pidfile named "vmm.pid" there with the VMM's pid as soon as it started (so a
	// later process can reap it after a crash). The caller removes RunDir after Kill.
	RunDir string
	// Kernel is an uncompressed vmlinux (ELF, PVH entry point), which both backends boot.
	Kernel string
	// Initrd is a newc cpio initramfs holding the guest root and the agent as /init. Both
	// backends boot it (Firecracker: boot-source initrd_path); the kernel needs no module to
	// mount it.
	Initrd string
	// RootDrive is an optional read-only ext4 image of the guest root, attached as the first
	// (virtio) drive when set. The Debian kernel has virtio_blk as a module, so the kernel cannot
	// mount it itself: Initrd is then the small boot initramfs whose agent loads the module and
	// switches to the drive (see CmdlineRoot).
	RootDrive string
	// ImageDrive is an optional read-only ext4 image of a tool's root (a container image's or a
	// base image's rootfs; see package rootdrive), attached as a virtio drive after RootDrive.
	// The agent finds it by its label (internal/guest.ImageLabel), not its position. The file is readable
	// by root only (an image may hold files only its own root may read): drivers open it as the
	// daemon and hand the VMM the descriptor (QEMU) or a link in its jail (Firecracker).
	ImageDrive string
	// Cmdline is the kernel command line the Sandbox wants (agent options such as
	// "axocoatl.chan=..."); the driver appends its console and device arguments.
	Cmdline string
	// VCPUs is the number of vCPUs (>= 1).
	VCPUs int
	// MemoryMB is guest RAM in MiB (>= 128: the Sandbox clamps).
	MemoryMB int
	// Stderr, when non-nil, receives the VMM's own stderr and the guest console (for debugging).
	Stderr io.Writer
	// Net, when set, gives the VM a virtio-net NIC (MAC GuestMAC) backed by a tap device in this
	// network namespace for VMs (package callnet): QEMU takes the tap by descriptor (NS.OpenTap),
	// Firecracker opens it by name from inside the namespace under its jailer (NS.MakeTap). nil:
	// no NIC. A driver that cannot give one fails Boot and Restore.
	Net *callnet.NS
}

// GuestMAC is every VM's NIC's MAC address (locally administered). Each NIC is alone on its
// link, so they need not differ; a fixed one lets snapshot clones keep the snapshot's.
const GuestMAC = "02:a0:c0:a7:00:01"

// NICDriver is implemented by drivers that can give a VM a NIC (BootSpec.Net).
type NICDriver interface {
	// SupportsNIC says why this driver cannot give VMs a NIC here ("" when it can).
	SupportsNIC() string
}

// Machine is one running VM. Kill is idempotent and safe to call concurrently with every other
// method; after Kill returns the VMM process has exited and been waited for.
type Machine interface {
	// Channel returns the host end of the agent's channel (QEMU: the host's end of the socket
	// pair whose other end is the serial chardev; Firecracker: the vsock uds after "CONNECT <port>\n" / "OK").
	// The first call establishes it, respecting ctx; later calls return the same stream. Closing
	// it does not stop the VM.
	Channel(ctx context.Context) (io.ReadWriteCloser, error)
	// PID is the VMM process id.
	PID() int
	// Kill stops the VM at once (SIGKILL to the VMM), waits for the process and closes the
	// channel and any control connection. It does not remove RunDir.
	Kill() error
	// Done is closed when the VMM process exited (for any reason).
	Done() <-chan struct{}
}

// The agent's kernel command line arguments, set by the Sandbox (drivers only append their own).
const (
	// CmdlineChannel selects the agent channel; see Driver.GuestChannel.
	CmdlineChannel = "axocoatl.chan"
	// CmdlineModules is a comma-separated, ordered list of kernel modules the agent loads from
	// /lib/modules/axocoatl/<name>.ko before it opens the channel.
	CmdlineModules = "axocoatl.modules"
	// CmdlineRoot names the block device (e.g. "vda") holding the read-only ext4 guest root the
	// agent mounts and switches to before it opens its channel (after loading the modules).
	CmdlineRoot = "axocoatl.root"
)

// BaseCmdline is the kernel command line measured to boot fastest and reliably under QEMU TCG
// (figures: QEMU CPU time per boot to the agent, Debian cloud kernel 6.1):
//   - tsc_early_khz avoids a PIT calibration hang (drivers override it with the host's rate);
//   - cryptomgr.notests saves ~200 ms of crypto self-tests;
//   - initcall_blacklist skips built-in initcalls a single-use tool VM never needs: the CTR-KDF
//     self-test (runs despite notests, ~130 ms), kprobe events, IMA/EVM (hashes at boot), the
//     built-in certificate list (only module signature checks use it; unsigned-key modules
//     still load, tainting) and the i8042 keyboard controller probe;
//   - init_on_alloc=0: Debian zeroes every allocated page, initramfs unpacking included;
//   - lsm=capability: no AppArmor/TOMOYO/landlock set-up (the guest loads no policy);
//   - no_timer_check, rcupdate.rcu_expedited=1, kfence.sample_interval=0: less waiting at boot;
//   - nowatchdog, pci=off: no lockup-detector threads, no PCI bus probing (the machines
//     have none: every device is virtio-mmio or ISA); ~40 ms less per cold call under TCG;
//   - noreplace-smp: a one-vCPU guest otherwise rewrites every LOCK prefix in the kernel's text
//     at boot, and under TCG each write to translated code is expensive: ~250 ms less per cold
//     call (the lock prefixes stay, which costs a uniprocessor nothing measurable);
//   - more initcall_blacklist entries, each measured with initcall_debug under TCG: CUBIC's
//     registration (~30 ms: it parses the kernel's BTF for its kfuncs; TCP falls back to Reno,
//     and these VMs have no NIC), the trace_printk tracefs export, the ACPI Generic Event Device
//     driver (power-button events: the agent ends the VM with reboot(2), QEMU runs with
//     -no-reboot) and kcompactd (no background compaction in a VM that lives for one call):
//     ~100 ms less per cold call.
const BaseCmdline = "quiet console=ttyS0 panic=-1 reboot=t tsc_early_khz=2000000 cryptomgr.notests nokaslr mitigations=off audit=0 lpj=4000000" +
	" no_timer_check rcupdate.rcu_expedited=1 init_on_alloc=0 lsm=capability kfence.sample_interval=0 nowatchdog pci=off" +
	" noreplace-smp initcall_blacklist=crypto_kdf108_init,init_kprobe_trace,init_ima,init_evm,load_system_certificate_list,i8042_init" +
	",cubictcp_register,init_trace_printk_function_export,ged_driver_init,kcompactd_init" +
	" rdinit=/init"
