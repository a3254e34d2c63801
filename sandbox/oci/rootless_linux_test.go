package oci

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/seccomp"

	"github.com/axocoatl/isolation"
)

// nobody is the unprivileged user the rootless tests run as.
const nobody = 65534

// TestRootless re-executes this test binary as uid/gid 65534 (TestRootlessHelper) with its own
// HOME and XDG_RUNTIME_DIR, so the sandbox runs rootless: a user namespace, no cgroup. It passes
// when the helper ran real calls; when this host cannot do rootless containers the helper reports
// Probe's reason and fix, and this test checks they are given and skips with them.
func TestRootless(t *testing.T) {
	needContainers(t)
	if os.Getenv("AXO_OCI_ROOTLESS_HELPER") != "" {
		t.Skip("helper")
	}
	// The go tool's build dir is private to root: the helper runs a world-readable copy.
	dir, err := os.MkdirTemp("", "oci-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "oci.test")
	if err := copyFile(os.Args[0], bin); err != nil {
		t.Fatal(err)
	}
	home, run := filepath.Join(dir, "home"), filepath.Join(dir, "run")
	for _, d := range []string{home, run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	// Bundles as a rootless user meets them: one it owns (built by it, say with `axoiso bundle`),
	// one owned by root; neither has the /axocoatl mount point.
	for _, b := range []string{"rl-own", "rl-root"} {
		_ = os.RemoveAll(filepath.Join(env.toolsDir, b))
		if err := makeBundle(env.toolsDir, b, env.probeBin); err != nil {
			t.Fatal(err)
		}
	}
	err = filepath.WalkDir(filepath.Join(env.toolsDir, "rl-own"), func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, nobody, nobody)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^TestRootlessHelper$", "-test.v", "-test.count=1")
	cmd.Dir = home
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + home, "XDG_RUNTIME_DIR=" + run,
		"AXO_OCI_ROOTLESS_HELPER=1", "AXO_OCI_TOOLS=" + env.toolsDir,
		// A state root nobody may create: under a root-owned 0755 directory.
		"AXO_OCI_UNWRITABLE=" + filepath.Join(dir, "not-yours", "oci")}
	if err := os.Mkdir(filepath.Join(dir, "not-yours"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("helper output:\n%s", out)
	if reason, fix, ok := unavailableReport(string(out)); ok {
		if reason == "" || fix == "" {
			t.Fatalf("rootless Oci unavailable without a reason and a fix: %q / %q", reason, fix)
		}
		t.Skipf("this host cannot run rootless containers: %s (fix: %s)", reason, fix)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: TestRootlessHelper") {
		t.Fatalf("rootless helper failed: %v", err)
	}
	// Everything the rootless sandbox created lived under its state root in XDG_RUNTIME_DIR.
	stateRoot := filepath.Join(run, "axocoatl", "oci")
	ents, err := os.ReadDir(stateRoot)
	if err != nil {
		t.Fatalf("the default rootless state root was not used: %v", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "axocoatl-") {
			t.Errorf("state dir left: %s", e.Name())
		}
	}
	if left, _ := os.ReadDir(filepath.Join(stateRoot, ".libcontainer")); len(left) != 0 {
		t.Errorf("libcontainer state left: %d containers", len(left))
	}
}

// unavailableReport finds the helper's "ROOTLESS UNAVAILABLE" report.
func unavailableReport(out string) (reason, fix string, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if r, found := strings.CutPrefix(sc.Text(), "ROOTLESS UNAVAILABLE: "); found {
			reason, ok = r, true
		}
		if f, found := strings.CutPrefix(sc.Text(), "ROOTLESS FIX: "); found {
			fix = f
		}
	}
	return reason, fix, ok
}

// TestRootlessHelper is the unprivileged side of TestRootless.
func TestRootlessHelper(t *testing.T) {
	if os.Getenv("AXO_OCI_ROOTLESS_HELPER") == "" {
		t.Skip("only run by TestRootless")
	}
	if os.Geteuid() == 0 {
		t.Fatal("the rootless helper runs as root")
	}
	env.toolsDir = os.Getenv("AXO_OCI_TOOLS")
	env.probeTool = "rl-own"

	t.Run("unwritable state root", func(t *testing.T) {
		root := os.Getenv("AXO_OCI_UNWRITABLE")
		s, err := New(Config{StateRoot: root, BundleRoot: env.toolsDir})
		if err != nil {
			t.Fatalf("New failed hard: %v", err)
		}
		a := s.Probe(context.Background())
		if a.Available || !strings.Contains(a.Reason, root) || a.Fix == "" {
			t.Fatalf("probe: %+v", a)
		}
		if _, err := s.Run(context.Background(), probeCall(`{}`)); !errors.Is(err, isolation.ErrTierUnavailable) {
			t.Fatalf("Run: %v, want ErrTierUnavailable", err)
		}
		if err := s.Prepare(context.Background(), probeCall(`{}`)); !errors.Is(err, isolation.ErrTierUnavailable) {
			t.Fatalf("Prepare: %v, want ErrTierUnavailable", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})

	s, err := New(Config{BundleRoot: env.toolsDir, NoSeccomp: noSeccomp(), PoolIdle: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "axocoatl", "oci"); s.cfg.StateRoot != want {
		t.Errorf("default rootless state root %s, want %s", s.cfg.StateRoot, want)
	}
	a := s.Probe(context.Background())
	if !a.Available {
		s.Close()
		fmt.Printf("ROOTLESS UNAVAILABLE: %s\nROOTLESS FIX: %s\n", a.Reason, a.Fix)
		t.Skip(a.Reason)
	}
	if !strings.Contains(a.Backend, "rootless") {
		t.Errorf("probe backend %q does not say which limits are missing rootless", a.Backend)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		assertNoChildren(t)
	})

	t.Run("root-owned bundle without mount point", func(t *testing.T) {
		c := probeCall(`{}`)
		c.Tool, c.Dir = "rl-root", filepath.Join(env.toolsDir, "rl-root")
		_, err := s.Run(context.Background(), c)
		if err == nil || !strings.Contains(err.Error(), "/axocoatl") || !strings.Contains(err.Error(), "mkdir") {
			t.Fatalf("err %v: want the missing mount point and how to create it", err)
		}
	})
	t.Run("echo", func(t *testing.T) {
		out, err := run(t, s, `{"op":"echo","n":7}`, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if e, _ := decode(t, out)["echo"].(map[string]any); e["n"] != float64(7) {
			t.Fatalf("output %s", out.Output)
		}
	})
	t.Run("isolation", func(t *testing.T) {
		out, err := run(t, s, `{"op":"whoami"}`, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m := decode(t, out)
		if m["uid"] != float64(0) || m["pid"] != float64(1) || m["hostname"] != "axocoatl" || fmt.Sprint(m["ifaces"]) != "[lo]" {
			t.Errorf("namespaces: %s", out.Output)
		}
		if m["cap_eff"] != "0000000000000000" || m["cap_bnd"] != "0000000000000000" || m["no_new_privs"] != "1" {
			t.Errorf("privileges: %s", out.Output)
		}
		if seccomp.Enabled && m["seccomp"] != "2" {
			t.Errorf("seccomp mode %v: want 2 (filter)", m["seccomp"])
		}
	})
	hostFile := filepath.Join(os.Getenv("HOME"), "secret")
	if err := os.WriteFile(hostFile, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	escapes := []struct{ name, input string }{
		{"read host file", fmt.Sprintf(`{"op":"read","path":%q}`, hostFile)},
		{"write host path", fmt.Sprintf(`{"op":"write","path":%q}`, filepath.Join(os.Getenv("HOME"), "planted"))},
		{"write rootfs", `{"op":"write","path":"/tool"}`},
		{"dial host loopback", fmt.Sprintf(`{"op":"dial","addr":%q}`, ln.Addr().String())},
	}
	if seccomp.Enabled {
		escapes = append(escapes, struct{ name, input string }{"keyctl denied by seccomp", `{"op":"keyctl"}`})
	}
	for _, tc := range escapes {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, s, tc.input, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m := decode(t, out); m["error"] == "" || m["error"] == nil {
				t.Fatalf("%s succeeded: %s", tc.name, out.Output)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(os.Getenv("HOME"), "planted")); err == nil {
		t.Error("a rootless container wrote a host path")
	}
	t.Run("timeout", func(t *testing.T) {
		if _, err := run(t, s, `{"op":"spin"}`, 1500*time.Millisecond); !errors.Is(err, isolation.ErrTimeout) {
			t.Fatalf("err %v: want ErrTimeout", err)
		}
	})
	t.Run("warm pool", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		call := probeCall(`{"op":"echo","pooled":true}`)
		if err := s.Prepare(ctx, call); err != nil {
			t.Fatal(err)
		}
		if st := s.PoolStats(); len(st) != 1 || st[0].Ready != st[0].Size {
			t.Fatalf("pool %+v", st)
		}
		out, err := s.Run(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if e, _ := decode(t, out)["echo"].(map[string]any); e["pooled"] != true {
			t.Fatalf("output %s", out.Output)
		}
	})
}

// assertNoChildren fails when a live child process of this process remains (libcontainer's
// container inits are its children).
func assertNoChildren(t *testing.T) {
	t.Helper()
	me := strconv.Itoa(os.Getpid())
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		st, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
		i := strings.LastIndexByte(string(st), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(st[i+1:]))
		if len(f) > 1 && f[1] == me && f[0] != "Z" {
			t.Errorf("child process left: pid %s (%s)", p.Name(), st[:i+1])
		}
	}
}

// TestNewUnusableStateRoot: a state root that cannot be created does not fail New; the sandbox
// reports why through Probe and refuses calls with ErrTierUnavailable.
func TestNewUnusableStateRoot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, root string }{
		{"parent is a file", filepath.Join(file, "oci")},
		{"inside /proc", "/proc/self/axocoatl-oci"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{StateRoot: tc.root, BundleRoot: t.TempDir()})
			if err != nil {
				t.Fatalf("New failed hard: %v", err)
			}
			a := s.Probe(context.Background())
			if a.Available || !strings.Contains(a.Reason, tc.root) || !strings.Contains(a.Fix, "state_root") {
				t.Fatalf("probe: %+v", a)
			}
			call := probeCall(`{}`)
			if _, err := s.Run(context.Background(), call); !errors.Is(err, isolation.ErrTierUnavailable) {
				t.Fatalf("Run: %v, want ErrTierUnavailable", err)
			}
			if err := s.Prepare(context.Background(), call); !errors.Is(err, isolation.ErrTierUnavailable) {
				t.Fatalf("Prepare: %v, want ErrTierUnavailable", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
