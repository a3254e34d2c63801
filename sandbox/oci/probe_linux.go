package oci

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/opencontainers/runc/libcontainer/seccomp"

	"github.com/axocoatl/isolation"
)

// Probe reports whether containers can run here, and if not, exactly why and how to fix it.
func (s *Sandbox) Probe(ctx context.Context) isolation.Availability {
	a := isolation.Availability{Backend: s.be.name()}
	no := func(reason, fix string) isolation.Availability {
		a.Reason, a.Fix = reason, fix
		return a
	}
	if s.broken != nil {
		return *s.broken
	}
	if !seccomp.Enabled && !s.cfg.NoSeccomp && s.cfg.Backend == BackendLibcontainer {
		return no("this binary was built without seccomp support, so containers cannot get the default seccomp profile",
			"install libseccomp-dev and build with `go build -tags seccomp` (or set the Oci config's no_seccomp to run without the profile)")
	}
	if b, ok := s.be.(*binaryBackend); ok {
		if _, err := exec.LookPath(b.bin); err != nil {
			return no(fmt.Sprintf("the %s backend is selected but %q is not an executable in PATH", b.kind, b.bin),
				fmt.Sprintf("apt-get install %s, set runtime_binary to its path, or use the embedded libcontainer backend", b.kind))
		}
	}
	if _, err := os.Stat("/proc/self/ns/pid"); err != nil {
		return no("the kernel has no namespaces (/proc/self/ns/pid is missing)", "run on a Linux kernel with namespaces enabled")
	}
	if s.rootless {
		if v, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(v)) == "0" {
			return no("not running as root and unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)",
				"run as root, or `sysctl -w kernel.unprivileged_userns_clone=1`")
		}
		if v, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(v)) == "0" {
			return no("not running as root and user.max_user_namespaces is 0", "run as root, or `sysctl -w user.max_user_namespaces=15000`")
		}
		if err := tryUserNamespace(); err != nil {
			return no(fmt.Sprintf("not running as root and this user cannot create a user namespace: %v", err),
				"run as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)")
		}
	} else if missing := missingCapabilities(); len(missing) > 0 {
		return no(fmt.Sprintf("running as root without %s in its effective capabilities: a call's processes run as uids of their own, "+
			"so without CAP_KILL its timeout could not kill them, and without the others its namespaces, ids and roots cannot be set up",
			strings.Join(missing, ", ")),
			"keep them in the service's capability bounding set (see packaging/axoiso.service)")
	} else if !s.cfg.UseSystemd {
		if cgroupV2() {
			ctrl, _ := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
			for _, c := range []string{"memory", "pids", "cpu"} {
				if !strings.Contains(" "+string(ctrl)+" ", " "+c+" ") {
					return no(fmt.Sprintf("the cgroup v2 controller %q is not enabled at /sys/fs/cgroup", c),
						"enable it (kernel command line cgroup_enable=memory, or `echo +"+c+" > /sys/fs/cgroup/cgroup.subtree_control`)")
				}
			}
		} else {
			for _, c := range []string{"memory", "pids", "cpu"} {
				if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c)); err != nil {
					return no(fmt.Sprintf("the cgroup v1 %q hierarchy is not mounted at /sys/fs/cgroup/%s", c, c),
						"mount it (`mount -t cgroup -o "+c+" cgroup /sys/fs/cgroup/"+c+"`) or boot with cgroup v2")
				}
			}
		}
	}
	f, err := os.CreateTemp(s.ioRoot, ".probe-*")
	if err != nil {
		return no(fmt.Sprintf("the state root %s is not writable: %v", s.ioRoot, err), "fix its permissions or set state_root to a writable directory")
	}
	f.Close()
	os.Remove(f.Name())
	if s.rootless {
		if s.cgroupLimits() {
			a.Backend += " (rootless; limits via the user's systemd)"
		} else {
			a.Backend += " (rootless; no memory/pids/CPU limits without cgroup v2 delegation)"
		}
	}
	a.Available = true
	if why := s.netUnavailable(); why != "" {
		a.Network = "unavailable: " + why
	} else {
		a.Network = "per-call network namespaces whose only way out is the egress gate"
	}
	return a
}

// tryUserNamespace clones a child into a new user namespace mapping this user to 0 and lets its
// exec fail on a path that does not exist: ENOENT proves the namespace was created (the exec runs
// after it), any other error is the kernel refusing it.
func tryUserNamespace() error {
	uid, gid := os.Geteuid(), os.Getegid()
	cmd := exec.Command("/nonexistent/axocoatl-userns-probe")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}},
		GidMappingsEnableSetgroups: false,
	}
	err := cmd.Start()
	if err == nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil
	}
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// requiredCapabilities are what a root daemon needs for containers with uid slots, by bit number
// (linux/capability.h). CAP_KILL above all: a call's processes, and the helper that holds its
// namespaces, run as the slot's uid, and a daemon without CAP_KILL cannot signal them, so a call
// past its timeout would hang instead of being killed.
var requiredCapabilities = []struct {
	bit  uint
	name string
}{
	{5, "CAP_KILL"}, {6, "CAP_SETGID"}, {7, "CAP_SETUID"}, {21, "CAP_SYS_ADMIN"},
}

// missingCapabilities lists the required capabilities this process lacks in its effective set.
func missingCapabilities() []string {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil // no /proc: the checks after this one say so
	}
	return capabilitiesMissingFrom(status)
}

// capabilitiesMissingFrom reads CapEff from a /proc/PID/status text and lists the required
// capabilities not in it; nil when CapEff is absent or unreadable (nothing to judge by).
func capabilitiesMissingFrom(status []byte) []string {
	for _, line := range strings.Split(string(status), "\n") {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		eff, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return nil
		}
		var missing []string
		for _, c := range requiredCapabilities {
			if eff&(1<<c.bit) == 0 {
				missing = append(missing, c.name)
			}
		}
		return missing
	}
	return nil
}
