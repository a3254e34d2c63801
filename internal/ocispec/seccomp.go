package ocispec

import (
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// deniedSyscalls fail with EPERM. With every capability dropped and no_new_privs set most of them
// already fail; the filter is defence in depth against kernel attack surface an unprivileged
// process can still reach (keyrings, bpf, perf, userfaultfd, io_uring, mounts, namespace creation, ...).
var deniedSyscalls = []string{
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
	"finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms",
	"init_module", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl",
	"kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount",
	"mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
	"open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
	"process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "reboot",
	"request_key", "setns", "settimeofday", "stime", "swapoff", "swapon",
	"sysfs", "syslog", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat",
	"vhangup", "vm86", "vm86old",
}

// DefaultSeccomp is the seccomp profile every container gets: allow by default, EPERM for the
// syscalls above, EPERM for clone with any namespace flag, ENOSYS for clone3 (its flags live in
// memory a filter cannot inspect, so libc falls back to clone, which is filtered).
func DefaultSeccomp() *specs.LinuxSeccomp {
	eperm := uint(1)
	enosys := uint(38)
	// A clone asking for any new namespace is refused: one rule per flag, since the rules of one
	// syscall are ORed and MaskedEqual(flag, flag) matches when that bit is set.
	nsFlags := []uint64{0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000}
	rules := []specs.LinuxSyscall{{Names: append([]string(nil), deniedSyscalls...), Action: specs.ActErrno, ErrnoRet: &eperm}}
	for _, f := range nsFlags {
		rules = append(rules, specs.LinuxSyscall{Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}}})
	}
	rules = append(rules, specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys})
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: nativeArches(runtime.GOARCH),
		Syscalls:      rules,
	}
}

// nativeArches are the syscall ABIs a process on a host of this Go architecture can use: its own
// plus the compat ones the kernel also accepts (x86 and x32 on amd64, arm on arm64). A syscall made
// through any other ABI hits libseccomp's bad-architecture action (kill) anyway, so listing
// foreign ABIs adds nothing but filter code that the init compiles, patches and loads per
// container (each ABI roughly doubles that work, ~0.3 ms per container here).
func nativeArches(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	case "386":
		return []specs.Arch{specs.ArchX86}
	case "arm":
		return []specs.Arch{specs.ArchARM}
	}
	// Other hosts: the architecture libseccomp detects as native (an empty list).
	return nil
}
