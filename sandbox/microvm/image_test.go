package microvm_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// busyboxApplets are linked into a test bundle's /bin.
var busyboxApplets = []string{"sh", "cat", "echo", "id", "ls", "stat", "hostname", "printf", "test", "sleep", "wc", "head", "touch", "mknod", "tr", "grep", "sed"}

// busyboxBundle writes an OCI bundle whose rootfs holds a static busybox and whose process is
// `/bin/sh -c script` as uid/gid, with env and cwd. extra, when set, adds to the rootfs.
func busyboxBundle(t testing.TB, script string, uid, gid uint32, env []string, cwd string, extra func(rootfs string)) string {
	t.Helper()
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	dir := filepath.Join(t.TempDir(), "bundle")
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "etc", "work", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if extra != nil {
		extra(rootfs)
	}
	cfg := map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"args": []string{"/bin/sh", "-c", script},
			"env":  env,
			"cwd":  cwd,
			"user": map[string]any{"uid": uid, "gid": gid},
		},
		"root": map[string]any{"path": "rootfs", "readonly": true},
	}
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func imageCall(id, dir, input string) sandbox.Call {
	return sandbox.Call{ID: id, Tool: "img", Runtime: isolation.RequireContainerImage, Dir: dir, Input: []byte(input),
		Limits: sandbox.Limits{Timeout: 30 * time.Second}.WithDefaults()}
}

// imageEcho reports what the process got from config.json and its environment.
const imageEcho = `read -r line < /axocoatl/input.json
printf '{"in":%s,"uid":"%s","gid":"%s","cwd":"%s","greet":"%s","host":"%s"}' "$line" "$(id -u)" "$(id -g)" "$(pwd)" "$GREETING" "$(hostname)" > /axocoatl/output.json
echo image-stderr >&2`

// A ContainerImage bundle boots in the microVM tier: its rootfs becomes a read-only drive the
// agent runs the bundle's process on, with its args, env, cwd and user, the same I/O protocol.
func TestImageTool(t *testing.T) {
	s := newSandbox(t, microvm.Config{DriveDir: filepath.Join(t.TempDir(), "drives")})
	if why := s.Supports(isolation.RequireContainerImage); why != "" {
		t.Fatalf("Supports(ContainerImage) = %q", why)
	}
	dir := busyboxBundle(t, imageEcho, 1000, 1000, []string{"PATH=/bin", "GREETING=hello"}, "/work", nil)
	o, err := s.Run(context.Background(), imageCall("img-1", dir, `{"a":1}`))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if o.ExitCode != 0 {
		t.Fatalf("exit %d: %s", o.ExitCode, o.Stderr)
	}
	var out map[string]any
	if err := json.Unmarshal(o.Output, &out); err != nil {
		t.Fatalf("output %q: %v", o.Output, err)
	}
	want := map[string]any{"uid": "1000", "gid": "1000", "cwd": "/work", "greet": "hello", "host": "axocoatl"}
	for k, v := range want {
		if out[k] != v {
			t.Errorf("%s = %v, want %v (output %s)", k, out[k], v, o.Output)
		}
	}
	if in, _ := out["in"].(map[string]any); in["a"] != 1.0 {
		t.Errorf("input = %v", out["in"])
	}
	if !strings.Contains(o.Stderr, "image-stderr") {
		t.Errorf("stderr %q", o.Stderr)
	}
}

// hostileScript probes what a tool can do with hostile contents of its own image (run as the
// image's uid 0): each probe's result goes into the output.
const hostileScript = `r=""
add() { r="$r\"$1\":\"$2\","; }
if cat /evil/mem >/dev/null 2>&1; then add dev readable; else add dev denied; fi
add suid "$(/evil/suid)"
add abs "$(cat /evil/abs 2>&1 | head -c 40)"
add secret "$(cat /evil/secret 2>&1 | head -c 40)"
if touch /newfile 2>/dev/null || touch /etc/passwd 2>/dev/null; then add rootfs writable; else add rootfs readonly; fi
if mknod /tmp/m c 1 1 2>/dev/null; then add mknod ok; else add mknod denied; fi
add capeff "$(grep CapEff /proc/self/status | tr -d ' \t')"
if echo 1 > /proc/sys/kernel/printk 2>/dev/null; then add procsys writable; else add procsys readonly; fi
add tmp "$(echo x > /tmp/x && cat /tmp/x)"
printf '{%s"end":1}' "$r" > /axocoatl/output.json`

// HostileRootfs is what hostileScript must see in every tier that runs the bundle.
var HostileRootfs = map[string]any{"dev": "denied", "suid": "0", "abs": "image-marker", "secret": "topsecret",
	"rootfs": "readonly", "mknod": "denied", "capeff": "CapEff:0000000000000000", "procsys": "readonly", "tmp": "x"}

// hostileExtra adds the hostile contents to a busybox rootfs: a device node, a set-uid binary
// owned by uid 1000 (it prints its effective uid), an absolute symlink, a 0600 file of root's.
func hostileExtra(t testing.TB) func(rootfs string) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not found: the set-uid probe is a small static C program")
	}
	src := filepath.Join(t.TempDir(), "euid.c")
	if err := os.WriteFile(src, []byte("#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d\", (int)geteuid());return 0;}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "euid")
	if out, err := exec.Command("gcc", "-static", "-O1", "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("gcc -static: %v: %s", err, out)
	}
	return func(rootfs string) {
		evil := filepath.Join(rootfs, "evil")
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.MkdirAll(evil, 0o755))
		must(unix.Mknod(filepath.Join(evil, "mem"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 1))))
		b, err := os.ReadFile(bin)
		must(err)
		must(os.WriteFile(filepath.Join(evil, "suid"), b, 0o755))
		must(os.Chown(filepath.Join(evil, "suid"), 1000, 1000))
		must(os.Chmod(filepath.Join(evil, "suid"), 0o4755))
		must(os.WriteFile(filepath.Join(rootfs, "etc", "marker"), []byte("image-marker"), 0o644))
		must(os.Symlink("/etc/marker", filepath.Join(evil, "abs")))
		must(os.WriteFile(filepath.Join(evil, "secret"), []byte("topsecret"), 0o600))
	}
}

// Hostile contents of an image are contained as the Oci tier contains them: device nodes do not
// open, set-uid bits do not apply, absolute symlinks resolve inside the image, a root-only file
// is the image root's; the tool has no capability, cannot write its root or /proc/sys. The drive
// itself is never written (read-only in the VMM and in the guest).
func TestImageHostileContents(t *testing.T) {
	drives := filepath.Join(t.TempDir(), "drives")
	s := newSandbox(t, microvm.Config{DriveDir: drives})
	dir := busyboxBundle(t, hostileScript, 0, 0, []string{"PATH=/bin"}, "/", hostileExtra(t))
	o, err := s.Run(context.Background(), imageCall("hostile", dir, `{}`))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var out map[string]any
	if err := json.Unmarshal(o.Output, &out); err != nil {
		t.Fatalf("output %q (exit %d, stderr %q): %v", o.Output, o.ExitCode, o.Stderr, err)
	}
	for k, v := range HostileRootfs {
		if out[k] != v {
			t.Errorf("%s = %q, want %q", k, out[k], v)
		}
	}
	// The drive is as built: compare it with a fresh build of the same tree.
	ents, _ := filepath.Glob(filepath.Join(drives, "*.ext4"))
	if len(ents) != 1 {
		t.Fatalf("drives %v, want one", ents)
	}
	sum := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		return hex.EncodeToString(h[:])
	}
	before := sum(ents[0])
	if _, err := s.Run(context.Background(), imageCall("hostile-2", dir, `{}`)); err != nil {
		t.Fatalf("second Run: %v", err)
	}
	if after := sum(ents[0]); after != before {
		t.Error("the drive changed under a call")
	}
}

// A pooled VM for an image tool is keyed by its drive: it waits with the drive mounted and the
// image path rehearsed, serves the call with the right output, and leaves nothing of the
// rehearsal behind (no output.json, a fresh /tmp).
func TestPooledImageCall(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1, DriveDir: filepath.Join(t.TempDir(), "drives")})
	script := `if [ -e /axocoatl/output.json ] || [ -n "$(ls /tmp)" ]; then echo dirty >&2; exit 9; fi
read -r l < /axocoatl/input.json; printf '{"in":%s}' "$l" > /axocoatl/output.json`
	dir := busyboxBundle(t, script, 0, 0, []string{"PATH=/bin"}, "/", nil)
	c := imageCall("pooled-img", dir, `{"p":1}`)
	if err := s.Prepare(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	waitPool(t, s, 1)
	if ps := s.PoolStats(); !strings.Contains(ps[0].Tool, "image-") {
		t.Errorf("pool %+v is not an image shape", ps)
	}
	o, err := s.Run(context.Background(), c)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if string(o.Output) != `{"in":{"p":1}}` || o.ExitCode != 0 {
		t.Fatalf("exit %d output %q stderr %q", o.ExitCode, o.Output, o.Stderr)
	}
	if st := s.Stats(); st.Pooled != 1 {
		t.Errorf("stats %+v: the call did not take the pooled VM", st)
	}
}
