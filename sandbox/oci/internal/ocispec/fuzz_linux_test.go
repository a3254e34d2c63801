package ocispec

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FuzzHarden feeds untrusted config.json bytes through the path the Oci tier takes (decode, then
// Harden): whatever they say, Harden either refuses them or returns a spec whose root is inside
// the bundle, with nothing of the bundle's but its process and root path.
func FuzzHarden(f *testing.F) {
	for _, s := range []string{
		`{"root":{"path":"rootfs"},"process":{"args":["/tool"],"cwd":"/"}}`,
		`{"root":{"path":"/b/rootfs"},"process":{"args":["/tool"],"user":{"uid":0,"gid":0}}}`,
		`{"root":{"path":"../etc"},"process":{"args":["/tool"]}}`,
		`{"root":{"path":"/etc"},"process":{"args":["/tool"]}}`,
		`{"root":{"path":"a/../../x"},"process":{"args":["x"],"cwd":"rel"}}`,
		`{"hostname":"h","hooks":{"prestart":[{"path":"/bin/sh"}]},"mounts":[{"destination":"/host","type":"bind","source":"/"}],"root":{"path":"rootfs"},"process":{"args":["/tool"],"env":["A=\u0000"]},"linux":{"namespaces":[{"type":"network","path":"/proc/1/ns/net"}],"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}`,
		`{}`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var b specs.Spec
		if json.Unmarshal(raw, &b) != nil {
			return
		}
		s, err := Harden(&b, "/b", Config{CgroupsPath: "/axocoatl/x", IODir: "/run/io"})
		if err != nil {
			return
		}
		rel, rerr := filepath.Rel("/b", s.Root.Path)
		if rerr != nil || !filepath.IsLocal(rel) || !s.Root.Readonly {
			t.Fatalf("root %+v is not inside the bundle, read-only", s.Root)
		}
		if s.Hooks != nil || s.Hostname != "axocoatl" || len(s.Process.Args) == 0 || !s.Process.NoNewPrivileges {
			t.Fatalf("hooks %v hostname %q args %v nnp %v", s.Hooks, s.Hostname, s.Process.Args, s.Process.NoNewPrivileges)
		}
		if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno || len(s.Process.Capabilities.Bounding) != 0 {
			t.Fatal("the default seccomp profile or the empty capability sets were replaced")
		}
		for _, ns := range s.Linux.Namespaces {
			if ns.Path != "" {
				t.Fatalf("namespace path %q kept", ns.Path)
			}
		}
		for _, m := range s.Mounts {
			if m.Destination == "/host" || (m.Type == "bind" && !strings.HasPrefix(m.Source, "/run/io")) {
				t.Fatalf("mount %+v", m)
			}
		}
	})
}
