// Package packaging holds what installs and ships the daemon: the systemd unit (axoiso.service),
// the container image's Dockerfile; scripts/install and scripts/release use them. Its tests
// check the unit with systemd-analyze, run a daemon under the unit's protections (as far as a
// machine without systemd as PID 1 can apply them), run the install script against a throwaway
// /etc, and run the release build.
package packaging

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/testutil/testguest"
)

func TestMain(m *testing.M) { os.Exit(testutil.RunRemovingBuiltCLI(m)) }

// unitDirectives returns the unit's [Service] directives (the last value of each key).
func unitDirectives(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("axoiso.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			section = l
		case section == "[Service]":
			k, v, _ := strings.Cut(l, "=")
			d[k] = v
		}
	}
	return d
}

// verifyRoot is a root for `systemd-analyze verify --root`: the system's units (the targets the
// unit names), the unit, and the built CLI where ExecStart names it.
func verifyRoot(t *testing.T, unit []byte) string {
	t.Helper()
	testutil.RequiresBinary(t, "systemd-analyze", "systemd")
	if _, err := os.Stat("/lib/systemd/system/sysinit.target"); err != nil {
		t.Skip("no /lib/systemd/system/sysinit.target to verify against (apt-get install systemd)")
	}
	root := t.TempDir()
	if err := os.CopyFS(filepath.Join(root, "lib/systemd/system"), os.DirFS("/lib/systemd/system")); err != nil {
		t.Fatal(err)
	}
	for p, b := range map[string][]byte{"etc/systemd/system/axoiso.service": unit} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(root, "usr/local/bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cli, err := os.ReadFile(filepath.Join(testutil.BuiltCLI(t, ".."), "axoiso"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "axoiso"), cli, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestUnitVerifies: `systemd-analyze verify` finds nothing to say about the unit (it exits 0
// on a misspelt key or value and only warns, so any output fails), and does about a broken one.
func TestUnitVerifies(t *testing.T) {
	unit, err := os.ReadFile("axoiso.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		unit  []byte
		clean bool
	}{
		{"as shipped", unit, true},
		{"misspelt key", bytes.Replace(unit, []byte("ProtectHome=yes"), []byte("ProtectHom=yes"), 1), false},
		{"bad value", bytes.Replace(unit, []byte("ProtectSystem=strict"), []byte("ProtectSystem=strcit"), 1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := verifyRoot(t, tc.unit)
			out, err := exec.Command("systemd-analyze", "verify", "--root="+root, filepath.Join(root, "etc/systemd/system/axoiso.service")).CombinedOutput()
			clean := err == nil && len(bytes.TrimSpace(out)) == 0
			if clean != tc.clean {
				t.Errorf("systemd-analyze verify: %v, %q (want clean: %v)", err, out, tc.clean)
			}
		})
	}
}

// setprivArgs turns the unit's NoNewPrivileges and CapabilityBoundingSet into setpriv's options.
func setprivArgs(t *testing.T, d map[string]string) []string {
	t.Helper()
	caps := strings.Fields(d["CapabilityBoundingSet"])
	if len(caps) == 0 {
		t.Fatal("the unit sets no CapabilityBoundingSet")
	}
	bset := "-all"
	for _, c := range caps {
		bset += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	args := []string{"setpriv", "--inh-caps=-all", "--bounding-set=" + bset}
	if d["NoNewPrivileges"] == "yes" {
		args = append(args, "--nnp")
	}
	return args
}

// TestDaemonUnderUnitProtections runs real calls (a container, a microVM) with the unit's
// capability bounding set, no_new_privs, a read-only file system but for its ReadWritePaths,
// and ProtectHome: what the unit allows is enough for the tiers. The daemon's directories are
// the defaults the unit opens (state and run dirs under /run/axocoatl, the Wasm cache under
// /var/cache/axocoatl); the test's data dir (the prepared guest, standing for
// /var/lib/axocoatl) is added to them.
func TestDaemonUnderUnitProtections(t *testing.T) {
	testutil.RequiresRoot(t, "containers, VMs and mount namespaces")
	testutil.RequiresBinary(t, "setpriv", "util-linux")
	testutil.RequiresBinary(t, "unshare", "util-linux")
	d := unitDirectives(t)
	if d["ProtectSystem"] != "strict" || d["ProtectHome"] != "yes" {
		t.Fatalf("the test emulates ProtectSystem=strict and ProtectHome=yes; the unit says %q, %q", d["ProtectSystem"], d["ProtectHome"])
	}
	cli := filepath.Join(testutil.BuiltCLI(t, ".."), "axoiso")
	tools := t.TempDir()
	_ = os.Chmod(tools, 0o755)
	bundle := filepath.Join(tools, "upper")
	testutil.BusyboxTree(t, filepath.Join(bundle, "rootfs"), "sh", "tr", "id")
	cfg, _ := json.Marshal(map[string]any{"ociVersion": "1.0.2", "root": map[string]any{"path": "rootfs"},
		"process": map[string]any{"args": []string{"/bin/sh", "-c", `tr a-z A-Z < /axocoatl/input.json > /axocoatl/output.json`},
			"env": []string{"PATH=/bin"}, "cwd": "/", "user": map[string]any{"uid": 1000, "gid": 1000}}})
	writeFile(t, filepath.Join(bundle, "config.json"), cfg)
	writeFile(t, filepath.Join(tools, "shell/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"main.sh","timeout_ms":60000}`))
	writeFile(t, filepath.Join(tools, "shell/main.sh"), []byte(`echo "{\"uid\":$(id -u)}" > /axocoatl/output.json`))
	if err := os.MkdirAll("/var/cache/axocoatl", 0o755); err != nil {
		t.Fatal(err)
	}

	rw := d["ReadWritePaths"]
	calls := []struct {
		tier, tool, want string
		dataDir          bool
	}{
		{"Oci", "upper", `{"X":"Y"}`, false},
		{"Firecracker", "shell", `{"uid":65534}`, true},
	}
	for _, c := range calls {
		t.Run(c.tier, func(t *testing.T) {
			config := map[string]any{}
			paths := rw
			if c.dataDir {
				data := testguest.DataDir(t)
				target, err := filepath.EvalSymlinks(testguest.VMDir(data))
				if err != nil {
					t.Fatal(err)
				}
				config["data_dir"] = data
				paths += " " + target
			}
			cfgFile := filepath.Join(t.TempDir(), "axoiso.json")
			b, _ := json.Marshal(config)
			writeFile(t, cfgFile, b)
			args := append([]string{"--mount", "--propagation", "private", "sh", "testdata/harden.sh", paths}, setprivArgs(t, d)...)
			args = append(args, cli, "run", "--config", cfgFile, "--tools", tools, "--tier", c.tier, "--input", `{"x":"y"}`, c.tool)
			var stdout, stderr bytes.Buffer
			// A capability too few can make a call hang (without CAP_KILL the daemon cannot kill
			// its containers' processes): a deadline turns that into a failure.
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "unshare", args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
			err := cmd.Run()
			if strings.Contains(stderr.String(), "tier unavailable") {
				t.Skipf("%s unavailable here: %s", c.tier, stderr.String())
			}
			if err != nil || strings.TrimSpace(stdout.String()) != c.want {
				t.Fatalf("under the unit's protections: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
			}
		})
	}
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestInstallScript runs scripts/install into a temporary root, in a mount namespace whose /etc
// is a copy of the host's without the Oci tier's user: it installs the binaries, the unit and the
// directories, and the daemon's own code creates the user and registers its ids in that /etc
// (twice: the second run changes nothing). The host's /etc is not touched.
func TestInstallScript(t *testing.T) {
	testutil.RequiresRoot(t, "the install script")
	testutil.RequiresBinary(t, "unshare", "util-linux")
	testutil.RequiresBinary(t, "useradd", "passwd")
	bins := testutil.BuiltCLI(t, "..")
	etc := filepath.Join(t.TempDir(), "etc")
	if out, err := exec.Command("cp", "-a", "/etc", etc).CombinedOutput(); err != nil {
		t.Skipf("copy /etc: %v: %s", err, out)
	}
	for _, f := range []string{"passwd", "group", "shadow", "gshadow", "subuid", "subgid"} {
		b, err := os.ReadFile(filepath.Join(etc, f))
		if err != nil {
			continue
		}
		var keep []string
		for _, l := range strings.SplitAfter(string(b), "\n") {
			if !strings.HasPrefix(l, "axocoatl:") {
				keep = append(keep, l)
			}
		}
		if err := os.WriteFile(filepath.Join(etc, f), []byte(strings.Join(keep, "")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hostSubuid, _ := os.ReadFile("/etc/subuid")
	root := t.TempDir()
	script := `set -e
mount --bind "$1" /etc
scripts/install --root "$2" --from "$3"
scripts/install --root "$2" --from "$3"
cat /etc/passwd > "$2/passwd.out"; cat /etc/subuid > "$2/subuid.out"; cat /etc/subgid > "$2/subgid.out"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", etc, root, bins)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/install: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "subordinate uids 1073741824:67108864") {
		t.Errorf("install did not report the ids it registered:\n%s", out)
	}
	for _, b := range []string{"axoiso", "axoiso-guest"} {
		fi, err := os.Stat(filepath.Join(root, "usr/local/bin", b))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", b, fi, err)
		}
	}
	unit, _ := os.ReadFile("axoiso.service")
	if got, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/axoiso.service")); !bytes.Equal(got, unit) {
		t.Errorf("the installed unit differs from packaging/axoiso.service")
	}
	for _, d := range []string{"etc/axocoatl", "var/lib/axocoatl", "var/cache/axocoatl", "var/axocoatl/bundles"} {
		if fi, err := os.Stat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("directory %s: %v", d, err)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "passwd.out"))
	if !regexp.MustCompile(`(?m)^axocoatl:x:\d+:\d+:[^:]*:/nonexistent:/usr/sbin/nologin$`).Match(passwd) {
		t.Errorf("no system user axocoatl in the namespace's /etc/passwd")
	}
	for _, f := range []string{"subuid.out", "subgid.out"} {
		b, _ := os.ReadFile(filepath.Join(root, f))
		if n := strings.Count(string(b), "axocoatl:1073741824:67108864\n"); n != 1 {
			t.Errorf("%s holds the range %d times:\n%s", f, n, b)
		}
	}
	if now, _ := os.ReadFile("/etc/subuid"); !bytes.Equal(now, hostSubuid) {
		t.Errorf("the host's /etc/subuid changed")
	}
}

// TestRelease runs scripts/release: static binaries whose checksums SHA256SUMS holds, an axoiso
// that says its version. arm64 only where a cross C compiler is installed.
func TestRelease(t *testing.T) {
	testutil.RequiresBinary(t, "gcc", "gcc")
	testutil.RequiresBinary(t, "pkg-config", "pkg-config")
	if exec.Command("pkg-config", "--exists", "libseccomp").Run() != nil {
		t.Skip("libseccomp-dev is not installed (apt-get install libseccomp-dev)")
	}
	arch := "amd64"
	arches := []string{"amd64"}
	if _, err := exec.LookPath("aarch64-linux-gnu-gcc"); err == nil {
		arch, arches = "all", []string{"amd64", "arm64"}
	} else {
		t.Log("linux/arm64 not built: no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)")
	}
	out := t.TempDir()
	cmd := exec.Command("scripts/release", "--out", out, "--version", "v0.0.0-test", "--arch", arch)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/release: %v\n%s", err, b)
	}
	check := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	check.Dir = out
	if b, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum --check: %v\n%s", err, b)
	}
	sums, _ := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if n := strings.Count(string(sums), "\n"); n != 2*len(arches) {
		t.Errorf("SHA256SUMS lists %d files, want %d:\n%s", n, 2*len(arches), sums)
	}
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for _, a := range arches {
		for _, b := range []string{"axoiso", "axoiso-guest"} {
			p := filepath.Join(out, b+"-linux-"+a)
			f, err := elf.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP {
					t.Errorf("%s is dynamically linked", p)
				}
			}
			if f.Machine != machine[a] {
				t.Errorf("%s is for %v", p, f.Machine)
			}
			f.Close()
		}
	}
	// The binaries run: amd64 here, arm64 under qemu-user where it is installed.
	tools := t.TempDir()
	for _, a := range arches {
		run := []string{filepath.Join(out, "axoiso-linux-"+a)}
		if a == "arm64" {
			q, err := exec.LookPath("qemu-aarch64")
			if err != nil {
				t.Log("linux/arm64 built but not run: no qemu-aarch64 (apt-get install qemu-user)")
				continue
			}
			run = append([]string{q}, run...)
		}
		v, err := exec.Command(run[0], append(run[1:], "--version")...).CombinedOutput()
		if err != nil || !strings.Contains(string(v), "v0.0.0-test") {
			t.Errorf("axoiso-linux-%s --version: %v, %q", a, err, v)
		}
		got, err := exec.Command(run[0], append(run[1:], "run", "--tools", tools, "--input", `{"a":[1]}`, "echo")...).Output()
		if err != nil || strings.TrimSpace(string(got)) != `{"a":[1]}` {
			t.Errorf("axoiso-linux-%s run echo: %v, %q", a, err, got)
		}
	}
	// The static amd64 build has every tier: seccomp is linked in.
	if os.Geteuid() == 0 {
		b, _ := exec.Command(filepath.Join(out, "axoiso-linux-amd64"), "tiers", "--json").Output()
		var tiers []struct {
			Tier      string
			Available bool
			Reason    string
		}
		_ = json.Unmarshal(b, &tiers)
		for _, tr := range tiers {
			if tr.Tier == "Oci" && !tr.Available && strings.Contains(tr.Reason, "seccomp") {
				t.Errorf("the amd64 release has no Oci tier: %s", tr.Reason)
			}
		}
	}
}
