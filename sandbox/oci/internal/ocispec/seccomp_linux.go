package ocispec

import (
	"runtime"
	"slices"
	"sync"

	mobyseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The seccomp profile is default-deny: the maintained Docker default profile
// (github.com/moby/profiles/seccomp, used as a library: its package init costs ~6 µs, and every
// container init re-executes this binary), evaluated for a process with no capabilities (so
// everything Docker grants only with a capability is refused), with these changes:
//   - the syscalls below are refused even where Docker allows them;
//   - socket(2) is allowed only for the families a JSON tool uses: AF_UNIX, AF_INET, AF_INET6,
//     and AF_NETLINK with NETLINK_ROUTE (what getifaddrs and Go's net.Interfaces use). Refused
//     (EPERM) among others: AF_VSOCK (it ignores network namespaces and reaches the hypervisor of
//     a cloud host), AF_PACKET, AF_ALG, other netlink protocols, AF_KEY, AF_BLUETOOTH;
//   - only the native syscall ABI is allowed (see nativeArches); socketcall(2), the 32-bit x86
//     multiplexer whose arguments (the socket family among them) live in memory a filter cannot
//     read, is refused as well, should a compat ABI ever be allowed again.
//
// Anything not allowed fails with EPERM; clone with a namespace flag fails with EPERM and clone3
// with ENOSYS (its flags live in memory a filter cannot inspect, so libc falls back to clone).

// deniedSyscalls are refused even where the Docker profile allows them: kernel attack surface an
// unprivileged tool has no use for (tracing other processes, reading another's memory, file
// handles, the clock).
var deniedSyscalls = []string{
	"clock_adjtime", "kcmp", "name_to_handle_at", "process_vm_readv", "process_vm_writev",
	"ptrace", "socketcall",
	// Refused by the Docker profile today without CAP_SYS_ADMIN and friends; listed so that a
	// newer version of it cannot allow them silently.
	"acct", "add_key", "bpf", "clock_settime", "delete_module", "finit_module", "fsconfig",
	"fsmount", "fsopen", "fspick", "init_module", "io_uring_enter", "io_uring_register",
	"io_uring_setup", "ioperm", "iopl", "kexec_file_load", "kexec_load", "keyctl",
	"lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_by_handle_at", "open_tree",
	"perf_event_open", "pivot_root", "quotactl", "reboot", "request_key", "setns",
	"settimeofday", "stime", "swapoff", "swapon", "syslog", "umount", "umount2", "unshare",
	"userfaultfd", "vhangup",
}

// allowedSocketFamilies may be created with any protocol.
var allowedSocketFamilies = []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6}

// profile is the profile built once; DefaultSeccomp hands out copies.
var profile = sync.OnceValue(buildProfile)

// DefaultSeccomp is the seccomp profile every container gets (see above). Each call returns a
// copy the caller may change. Should the Docker profile fail to evaluate (it reads the kernel's
// version), the profile refuses every syscall: containers then fail to start instead of running
// without a filter.
func DefaultSeccomp() *specs.LinuxSeccomp {
	p := profile()
	c := *p
	c.Architectures = slices.Clone(p.Architectures)
	c.Syscalls = make([]specs.LinuxSyscall, len(p.Syscalls))
	for i, r := range p.Syscalls {
		r.Names = slices.Clone(r.Names)
		r.Args = slices.Clone(r.Args)
		c.Syscalls[i] = r
	}
	return &c
}

func buildProfile() *specs.LinuxSeccomp {
	eperm := uint(unix.EPERM)
	out := &specs.LinuxSeccomp{
		DefaultAction:   specs.ActErrno,
		DefaultErrnoRet: &eperm,
		Architectures:   nativeArches(runtime.GOARCH),
	}
	noCaps := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}
	base, err := mobyseccomp.GetDefaultProfile(noCaps)
	if err != nil || base == nil || base.DefaultAction != specs.ActErrno {
		return out // refuses everything (see DefaultSeccomp)
	}
	for _, r := range base.Syscalls {
		r.Names = slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool {
			return n == "socket" || slices.Contains(deniedSyscalls, n)
		})
		if len(r.Names) > 0 {
			out.Syscalls = append(out.Syscalls, r)
		}
	}
	for _, af := range allowedSocketFamilies {
		out.Syscalls = append(out.Syscalls, specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: af, Op: specs.OpEqualTo}}})
	}
	// Comparisons on different arguments within one rule must all hold.
	out.Syscalls = append(out.Syscalls, specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActAllow,
		Args: []specs.LinuxSeccompArg{
			{Index: 0, Value: unix.AF_NETLINK, Op: specs.OpEqualTo},
			{Index: 2, Value: unix.NETLINK_ROUTE, Op: specs.OpEqualTo},
		}})
	return out
}

// nativeArches is the one syscall ABI the filter allows on a host of this Go architecture: the
// native one, without the compat ABIs the kernel also accepts (x86 and x32 on amd64, arm on
// arm64). A syscall made through any other ABI hits the bad-architecture action and the process
// is killed, so 32-bit tools do not run. Why: the allowlist is compiled per ABI by the container
// init, and each ABI multiplied the per-container cost (three ABIs: +25 ms of CPU per cold call
// here against one), and the compat entry points are kernel attack surface no JSON tool needs.
func nativeArches(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64}
	case "386":
		return []specs.Arch{specs.ArchX86}
	case "arm":
		return []specs.Arch{specs.ArchARM}
	}
	// Other hosts: the architecture libseccomp detects as native (an empty list).
	return nil
}
