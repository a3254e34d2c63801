package ocispec

import (
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func hostile() *specs.Spec {
	return &specs.Spec{
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "bundle-chosen",
		Process:  &specs.Process{Args: []string{"/tool"}, Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_SYS_ADMIN"}}},
		//lint:ignore SA1019 a hostile bundle may use the deprecated hook too
		Hooks:  &specs.Hooks{Prestart: []specs.Hook{{Path: "/bin/sh"}}},
		Mounts: []specs.Mount{{Destination: "/host", Type: "bind", Source: "/"}},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"}},
			Devices:    []specs.LinuxDevice{{Path: "/dev/sda", Type: "b", Major: 8}},
			Sysctl:     map[string]string{"kernel.x": "1"},
		},
	}
}

func TestHardenReplacesBundleSettings(t *testing.T) {
	s, err := Harden(hostile(), "/b", Config{CgroupsPath: "/axocoatl/x", IODir: "/run/io"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Hooks != nil || s.Linux.Devices != nil || s.Linux.Sysctl != nil {
		t.Error("hooks, devices or sysctls kept")
	}
	for _, m := range s.Mounts {
		if m.Destination == "/host" {
			t.Error("bundle mount kept")
		}
	}
	var types []specs.LinuxNamespaceType
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace path kept: %+v", ns)
		}
		types = append(types, ns.Type)
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.NetworkNamespace} {
		if !slices.Contains(types, want) {
			t.Errorf("namespace %s missing", want)
		}
	}
	if !s.Root.Readonly || s.Root.Path != "/b/rootfs" || !s.Process.NoNewPrivileges || len(s.Process.Capabilities.Bounding) != 0 {
		t.Errorf("root %+v nnp %v caps %+v", s.Root, s.Process.NoNewPrivileges, s.Process.Capabilities)
	}
	if *s.Linux.Resources.Memory.Limit != DefaultMemoryMB<<20 || *s.Linux.Resources.Pids.Limit != DefaultPids {
		t.Error("default limits not applied")
	}
	if s.Linux.Seccomp == nil || len(s.Linux.MaskedPaths) == 0 {
		t.Error("seccomp or masked paths missing")
	}
	if s.Hostname != "axocoatl" {
		t.Errorf("hostname %q: want the constant axocoatl", s.Hostname)
	}
}

func TestHardenRejects(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*specs.Spec)
	}{
		{"absolute root outside", func(s *specs.Spec) { s.Root.Path = "/" }},
		{"relative root escaping", func(s *specs.Spec) { s.Root.Path = "../../etc" }},
		{"no args", func(s *specs.Spec) { s.Process.Args = nil }},
		{"NUL in args", func(s *specs.Spec) { s.Process.Args = []string{"a\x00b"} }},
		{"relative cwd", func(s *specs.Spec) { s.Process.Cwd = "tmp" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := hostile()
			tc.mod(s)
			if _, err := Harden(s, "/b", Config{}); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestGenerateAndNetNS(t *testing.T) {
	args := []string{"python3", "/axocoatl/tool/src/main.py"}
	s, err := Generate("/rt", "/tools/t", args, Config{NetNS: "/proc/1/fd/9", ResolvConf: "/run/r.conf"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Process.User.UID != UnprivilegedID {
		t.Errorf("uid %d", s.Process.User.UID)
	}
	// The prepared namespace is joined: never the host's (no network entry) nor a fresh one.
	if n := slices.IndexFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace }); n < 0 || s.Linux.Namespaces[n].Path != "/proc/1/fd/9" {
		t.Errorf("namespaces %+v: want the network namespace /proc/1/fd/9", s.Linux.Namespaces)
	}
	if !slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool {
		return m.Destination == "/etc/resolv.conf" && m.Source == "/run/r.conf" && slices.Contains(m.Options, "ro")
	}) {
		t.Error("resolv.conf not bound read-only")
	}
	found := false
	for _, m := range s.Mounts {
		if m.Destination == "/axocoatl/tool" && slices.Contains(m.Options, "ro") {
			found = true
		}
	}
	if !found {
		t.Error("tool folder not bound read-only")
	}
}

func TestRootlessOptions(t *testing.T) {
	b := hostile()
	b.Process.User = specs.User{UID: 1000, GID: 1000}
	tests := []struct {
		name       string
		o          Config
		wantCgroup bool
		wantUID    uint32
		wantUserNS bool
	}{
		{"root", Config{CgroupsPath: "/axocoatl/x"}, true, 1000, false},
		{"rootless with delegated cgroups", Config{CgroupsPath: "/axocoatl/x", Rootless: true, HostUID: 65534, HostGID: 65534}, true, 0, true},
		{"rootless without cgroups", Config{CgroupsPath: "/axocoatl/x", Rootless: true, NoCgroup: true, HostUID: 65534, HostGID: 65534}, false, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Harden(b, "/b", tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Linux.CgroupsPath != "" && s.Linux.Resources != nil; got != tc.wantCgroup {
				t.Errorf("cgroup path %q resources %v: want cgroup %v", s.Linux.CgroupsPath, s.Linux.Resources, tc.wantCgroup)
			}
			if s.Process.User.UID != tc.wantUID {
				t.Errorf("uid %d, want %d", s.Process.User.UID, tc.wantUID)
			}
			hasUserNS := false
			for _, ns := range s.Linux.Namespaces {
				hasUserNS = hasUserNS || ns.Type == specs.UserNamespace
			}
			if hasUserNS != tc.wantUserNS {
				t.Errorf("user namespace %v, want %v", hasUserNS, tc.wantUserNS)
			}
			if tc.wantUserNS && (len(s.Linux.UIDMappings) != 1 || s.Linux.UIDMappings[0].HostID != 65534 || s.Linux.UIDMappings[0].Size != 1) {
				t.Errorf("uid mappings %+v", s.Linux.UIDMappings)
			}
			if s.Linux.Seccomp == nil || !s.Process.NoNewPrivileges {
				t.Error("seccomp or no_new_privs dropped")
			}
		})
	}
}

func TestNativeArches(t *testing.T) {
	for _, tc := range []struct {
		goarch    string
		want      []specs.Arch
		forbidden specs.Arch
	}{
		{"amd64", []specs.Arch{specs.ArchX86_64}, specs.ArchX86},
		{"arm64", []specs.Arch{specs.ArchAARCH64}, specs.ArchARM},
		{"386", []specs.Arch{specs.ArchX86}, specs.ArchX86_64},
		{"riscv64", nil, specs.ArchX86_64},
	} {
		got := nativeArches(tc.goarch)
		if !slices.Equal(got, tc.want) {
			t.Errorf("nativeArches(%s) = %v, want %v", tc.goarch, got, tc.want)
		}
		if slices.Contains(got, tc.forbidden) {
			t.Errorf("nativeArches(%s) lists the foreign ABI %s", tc.goarch, tc.forbidden)
		}
	}
}

// TestMounts checks the container's mount set in every mode: what a JSON tool needs, and no
// /sys, /dev/pts or /dev/mqueue (nor masks under a /sys that is not there).
func TestMounts(t *testing.T) {
	tests := []struct {
		name string
		o    Config
	}{
		{"root", Config{CgroupsPath: "/axocoatl/x", IODir: "/run/io"}},
		{"network namespace", Config{CgroupsPath: "/axocoatl/x", IODir: "/run/io", NetNS: "/proc/1/fd/9"}},
		{"rootless", Config{IODir: "/run/io", Rootless: true, NoCgroup: true, HostUID: 1000, HostGID: 1000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Harden(hostile(), "/b", tc.o)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]specs.Mount{}
			for _, m := range s.Mounts {
				got[m.Destination] = m
			}
			for _, want := range []string{"/proc", "/dev", "/dev/shm", "/tmp", "/axocoatl", "/axocoatl/input.json"} {
				if _, ok := got[want]; !ok {
					t.Errorf("mount %s missing", want)
				}
			}
			for _, bad := range []string{"/sys", "/dev/pts", "/dev/mqueue", "/host"} {
				if _, ok := got[bad]; ok {
					t.Errorf("mount %s present", bad)
				}
			}
			if !slices.Contains(got["/axocoatl/input.json"].Options, "ro") {
				t.Error("input.json is not bound read-only")
			}
			for _, p := range s.Linux.MaskedPaths {
				if !strings.HasPrefix(p, "/proc/") {
					t.Errorf("masked path %s is outside /proc", p)
				}
			}
		})
	}
}

// UserNS gives the container a user namespace whose ids 0-65535 are the slot's host ids; the
// bundle's user must lie inside it, whatever the bundle's own id mappings say.
func TestUserNS(t *testing.T) {
	ids := &IDMap{UID: 1 << 30, GID: 1<<30 + 1<<20, Size: 65536}
	b := hostile()
	b.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 1}} // ignored
	b.Process.User = specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{65534}}
	s, err := Harden(b, "/b", Config{UserNS: ids})
	if err != nil {
		t.Fatal(err)
	}
	n := slices.IndexFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.UserNamespace })
	if n < 0 || s.Linux.Namespaces[n].Path != "" {
		t.Fatalf("namespaces %+v: want a new user namespace", s.Linux.Namespaces)
	}
	wantU := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 30, Size: 65536}}
	wantG := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1<<30 + 1<<20, Size: 65536}}
	if !slices.Equal(s.Linux.UIDMappings, wantU) || !slices.Equal(s.Linux.GIDMappings, wantG) {
		t.Fatalf("mappings %+v %+v", s.Linux.UIDMappings, s.Linux.GIDMappings)
	}
	if s.Process.User.UID != 1000 || s.Process.User.GID != 1000 {
		t.Fatalf("user %+v: the bundle's user is kept inside the namespace", s.Process.User)
	}
	g, err := Generate("/rt", "/tools/t", []string{"/bin/sh", "x"}, Config{UserNS: ids})
	if err != nil || g.Process.User.UID != UnprivilegedID || len(g.Linux.UIDMappings) != 1 {
		t.Fatalf("generated: %v %+v", err, g)
	}
	for _, u := range []specs.User{{UID: 65536}, {GID: 70000}, {AdditionalGids: []uint32{1, 1 << 20}}} {
		b := hostile()
		b.Process.User = u
		if _, err := Harden(b, "/b", Config{UserNS: ids}); err == nil || !strings.Contains(err.Error(), "outside the container's id range") {
			t.Errorf("user %+v: err %v", u, err)
		}
	}
}

// The profile is default-deny: nothing is allowed unless a rule says so, socket(2) only for the
// listed families, and the extra denials are in no allow rule.
func TestSeccompProfile(t *testing.T) {
	p := DefaultSeccomp()
	if p.DefaultAction != specs.ActErrno || p.DefaultErrnoRet == nil || *p.DefaultErrnoRet != 1 {
		t.Fatalf("default action %s errno %v: want ERRNO(EPERM)", p.DefaultAction, p.DefaultErrnoRet)
	}
	allowed := map[string]bool{}
	var socketRules [][]specs.LinuxSeccompArg
	for _, r := range p.Syscalls {
		if r.Action != specs.ActAllow {
			continue
		}
		for _, n := range r.Names {
			if n == "socket" {
				socketRules = append(socketRules, r.Args)
			} else if len(r.Args) == 0 {
				allowed[n] = true
			}
		}
	}
	for _, n := range []string{"read", "write", "openat", "execve", "mmap", "futex", "exit_group", "clone"} {
		if !allowed[n] && n != "clone" {
			t.Errorf("%s is not allowed", n)
		}
	}
	if allowed["clone"] {
		t.Error("clone allowed without its namespace-flag filter")
	}
	for _, n := range deniedSyscalls {
		if allowed[n] {
			t.Errorf("%s allowed", n)
		}
	}
	if len(socketRules) != 4 {
		t.Fatalf("socket rules %v: want AF_UNIX, AF_INET, AF_INET6, AF_NETLINK+NETLINK_ROUTE", socketRules)
	}
	for _, args := range socketRules {
		if len(args) == 0 || args[0].Index != 0 || args[0].Op != specs.OpEqualTo {
			t.Errorf("socket rule %+v does not pin the family", args)
		}
		if args[0].Value == 16 && (len(args) != 2 || args[1].Index != 2 || args[1].Value != 0) {
			t.Errorf("netlink rule %+v does not pin NETLINK_ROUTE", args)
		}
	}
	// Copies: changing one does not change the next.
	p.Syscalls[0].Names[0] = "changed"
	if DefaultSeccomp().Syscalls[0].Names[0] == "changed" {
		t.Error("DefaultSeccomp shares its rules between calls")
	}
}
