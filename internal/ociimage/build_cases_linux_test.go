package ociimage

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func ignoreRandom(p string) bool { return strings.HasPrefix(p, "random_file_") }

// TestBuildFromTransports builds the same image from a loopback registry, an OCI layout and a
// docker-archive tarball, checks the rootfs and config.json, and checks the three are identical.
func TestBuildFromTransports(t *testing.T) {
	img := testImage(t)
	tmp := tempDir(t)
	refs := map[string]string{
		"docker":         pushImage(t, startRegistry(t), "tools/sample:v1", img),
		"oci":            writeLayout(t, filepath.Join(tmp, "layout"), "v1", img),
		"docker-archive": writeArchive(t, filepath.Join(tmp, "img.tar"), "tools/sample:v1", img),
	}
	snaps := map[string]map[string]node{}
	for _, tr := range []string{"docker", "oci", "docker-archive"} {
		dest := filepath.Join(tmp, "bundles", tr)
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := Build(context.Background(), refs[tr], dest, Config{Logger: quietLogger()}); err != nil {
			t.Fatalf("Build(%s): %v", refs[tr], err)
		}
		snaps[tr] = snapshot(t, filepath.Join(dest, "rootfs"))
		checkRootfs(t, tr, snaps[tr])
		checkSpec(t, tr, readSpec(t, dest))
		if left := leftovers(t, filepath.Dir(dest), "docker", "oci", "docker-archive"); len(left) > 0 {
			t.Errorf("%s: temporary files left next to the bundle: %v", tr, left)
		}
	}
	for _, tr := range []string{"oci", "docker-archive"} {
		if d := diffTrees(snaps["docker"], snaps[tr], nil); len(d) > 0 {
			t.Errorf("rootfs from docker:// and %s differ:\n%s", tr, strings.Join(d, "\n"))
		}
	}
}

func checkRootfs(t *testing.T, tr string, s map[string]node) {
	t.Helper()
	want := func(p, typ string) node {
		t.Helper()
		n, ok := s[p]
		if !ok {
			t.Errorf("%s: %s missing", tr, p)
		} else if n.Type != typ {
			t.Errorf("%s: %s is %s, want %s", tr, p, n.Type, typ)
		}
		return n
	}
	for _, p := range []string{"rmfile", "gone", "gone/f", "opq/old1", "opq/sub/old2", "etc/thing/was"} {
		if _, ok := s[p]; ok {
			t.Errorf("%s: %s should have been whited out", tr, p)
		}
	}
	want("opq/new", "file")
	want("opq/sub/new2", "file")
	if n := want("opq", "dir"); n.Mode != 0o711 {
		t.Errorf("%s: opq mode %v, want 0711 from the upper layer", tr, n.Mode)
	}
	want("etc/thing/inside", "file")
	if n := want("data/keep/a", "file"); n.Size != int64(len("new a")) || n.Mode != 0o644 {
		t.Errorf("%s: data/keep/a = %v, want the upper layer's 5 bytes, 0644", tr, n)
	}
	want("usr/lib/libx.so", "file") // written through the in-rootfs symlink lib -> usr/lib
	if n := want("lib", "symlink"); n.Link != "usr/lib" {
		t.Errorf("%s: lib -> %q", tr, n.Link)
	}
	if n := want("bin/sh", "symlink"); n.Link != "../usr/bin/tool" {
		t.Errorf("%s: bin/sh -> %q", tr, n.Link)
	}
	if n := want("abs", "symlink"); n.Link != "/usr/bin/tool" {
		t.Errorf("%s: abs -> %q", tr, n.Link)
	}
	if n := want("usr/bin/suid", "file"); n.Mode != 0o755|os.ModeSetuid {
		t.Errorf("%s: suid mode %v", tr, n.Mode)
	}
	if n := want("usr/bin/sgid", "file"); n.Mode != 0o711|os.ModeSetgid {
		t.Errorf("%s: sgid mode %v", tr, n.Mode)
	}
	if n := want("tmp", "dir"); n.Mode != 0o777|os.ModeSticky {
		t.Errorf("%s: tmp mode %v", tr, n.Mode)
	}
	if a, b := want("usr/bin/tool", "file"), want("usr/bin/tool-hard", "file"); a.HardGroup != b.HardGroup || a.HardGroup == "" {
		t.Errorf("%s: usr/bin/tool and tool-hard are not one inode", tr)
	}
	if a, b := want("data/keep/b", "file"), want("data/keep/b-link", "file"); a.HardGroup != b.HardGroup || a.Size != 70000 {
		t.Errorf("%s: data/keep/b-link is not a hard link of data/keep/b (%v / %v)", tr, a, b)
	}
	if n := want("ro", "dir"); n.Mode != 0o555 {
		t.Errorf("%s: ro mode %v, want 0555", tr, n.Mode)
	}
	if n := want("ro/sub", "dir"); n.Mode != 0o500 {
		t.Errorf("%s: ro/sub mode %v, want 0500", tr, n.Mode)
	}
	want("ro/sub/f", "file")
	want("data/fifo", "fifo")
	want("data/empty", "file")
	// Times come from the headers, also for directories whose children came later (base layer
	// entry index 6 is usr/bin/, written at t0+6min).
	if n := want("usr/bin", "dir"); n.Mtime != t0.Add(6*time.Minute).UnixNano() {
		t.Errorf("%s: usr/bin mtime %v, want %v", tr, time.Unix(0, n.Mtime).UTC(), t0.Add(6*time.Minute))
	}
	if n := want("etc/passwd", "file"); n.Mtime != t0.Add(2*time.Minute).UnixNano() {
		t.Errorf("%s: etc/passwd mtime %v", tr, time.Unix(0, n.Mtime).UTC())
	}
	found := false
	for p, n := range s {
		found = found || (ignoreRandom(p) && n.Size == 2048)
	}
	if !found {
		t.Errorf("%s: the random layer's file is missing", tr)
	}
	if os.Geteuid() == 0 {
		if n := want("data/keep", "dir"); n.UID != 1000 || n.GID != 2000 {
			t.Errorf("%s: data/keep owner %d:%d, want 1000:2000", tr, n.UID, n.GID)
		}
		if n := want("dev/null", "device"); n.Dev != unix.Mkdev(1, 3) {
			t.Errorf("%s: dev/null is device %d, want 1:3", tr, n.Dev)
		}
	}
}

func checkSpec(t *testing.T, tr string, s specs.Spec) {
	t.Helper()
	if got, want := s.Process.Args, []string{"/usr/bin/tool", "--flag", "x"}; !slices.Equal(got, want) {
		t.Errorf("%s: args %q, want %q", tr, got, want)
	}
	if s.Process.Cwd != "/data" {
		t.Errorf("%s: cwd %q", tr, s.Process.Cwd)
	}
	if s.Process.User.UID != 1000 || s.Process.User.GID != 2000 {
		t.Errorf("%s: user %d:%d, want app:extra = 1000:2000", tr, s.Process.User.UID, s.Process.User.GID)
	}
	for _, e := range []string{"FOO=bar", defaultPath, "HOME=/home/app"} {
		if !slices.Contains(s.Process.Env, e) {
			t.Errorf("%s: env %q lacks %q", tr, s.Process.Env, e)
		}
	}
	if s.Root == nil || s.Root.Path != "rootfs" || !s.Root.Readonly {
		t.Errorf("%s: root %+v", tr, s.Root)
	}
	if !s.Process.NoNewPrivileges || len(s.Process.Capabilities.Bounding) != 0 {
		t.Errorf("%s: process is not unprivileged: %+v", tr, s.Process)
	}
	if s.Annotations["org.example.tool"] != "yes" {
		t.Errorf("%s: labels not carried as annotations: %v", tr, s.Annotations)
	}
	var ns []string
	for _, n := range s.Linux.Namespaces {
		ns = append(ns, string(n.Type))
	}
	for _, n := range []string{"pid", "network", "ipc", "uts", "mount"} {
		if !slices.Contains(ns, n) {
			t.Errorf("%s: namespace %s missing: %v", tr, n, ns)
		}
	}
}

// TestMatchesUmoci compares Build's rootfs, file for file, with `umoci unpack` of the same OCI
// layout, and (with skopeo) with umoci's unpack of what skopeo copies out of the registry.
func TestMatchesUmoci(t *testing.T) {
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("umoci not installed (Debian: apt-get install umoci)")
	}
	if os.Geteuid() != 0 {
		t.Skip("comparison with umoci needs root (umoci restores owners and device nodes)")
	}
	img := testImage(t)
	tmp := tempDir(t)
	layoutDir := filepath.Join(tmp, "layout")
	ref := writeLayout(t, layoutDir, "v1", img)
	ours := filepath.Join(tmp, "ours")
	if err := Build(context.Background(), ref, ours, Config{Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(tmp, "umoci")
	if out, err := exec.Command(umoci, "unpack", "--image", layoutDir+":v1", theirs).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	a, b := snapshot(t, filepath.Join(ours, "rootfs")), snapshot(t, filepath.Join(theirs, "rootfs"))
	if d := diffTrees(a, b, ignoreRandom); len(d) > 0 {
		t.Errorf("Build and umoci unpack differ (%d paths):\n%s", len(d), strings.Join(d, "\n"))
	}
	t.Logf("compared %d paths with umoci unpack: types, modes, sizes, sha256, link targets, owners, mtimes, hard links", len(a))

	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Log("skopeo not installed: registry round trip through skopeo not compared")
		return
	}
	host := startRegistry(t)
	dref := pushImage(t, host, "tools/sample:v1", img)
	copied := filepath.Join(tmp, "skopeo-layout")
	cmd := exec.Command(skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", dref, "oci:"+copied+":v1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	viaSkopeo := filepath.Join(tmp, "skopeo-umoci")
	if out, err := exec.Command(umoci, "unpack", "--image", copied+":v1", viaSkopeo).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack of skopeo's copy: %v\n%s", err, out)
	}
	fromRegistry := filepath.Join(tmp, "ours-registry")
	if err := Build(context.Background(), dref, fromRegistry, Config{Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	c, d := snapshot(t, filepath.Join(fromRegistry, "rootfs")), snapshot(t, filepath.Join(viaSkopeo, "rootfs"))
	if diff := diffTrees(c, d, ignoreRandom); len(diff) > 0 {
		t.Errorf("Build(docker://) and skopeo copy + umoci unpack differ:\n%s", strings.Join(diff, "\n"))
	}
}

// TestMaliciousLayers: entries that would leave the rootfs are refused with ErrUnsafeLayer, and
// nothing is left behind: no bundle, no temporary directory, nothing written or removed outside.
func TestMaliciousLayers(t *testing.T) {
	tmp := tempDir(t)
	outside := filepath.Join(tmp, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host data"), 0o644); err != nil {
		t.Fatal(err)
	}
	climb := strings.Repeat("../", 12) + strings.TrimPrefix(outside, "/")
	cases := []struct {
		name   string
		layers [][]ent
	}{
		{"dotdot", [][]ent{{reg("../escape", 0o644, []byte("x"))}}},
		{"dotdot-inner", [][]ent{{dir("a/", 0o755), reg("a/../../escape", 0o644, []byte("x"))}}},
		{"dotdot-deep", [][]ent{{reg("a/b/../../../../../../escape", 0o644, []byte("x"))}}},
		{"absolute", [][]ent{{reg("/escape", 0o644, []byte("x"))}}},
		{"absolute-dir", [][]ent{{dir("/tmp/escape-dir/", 0o755)}}},
		{"symlink-abs-write-through", [][]ent{{sym("evil", outside), reg("evil/pwned", 0o644, []byte("x"))}}},
		{"symlink-rel-write-through", [][]ent{{sym("evil", climb), reg("evil/pwned", 0o644, []byte("x"))}}},
		{"symlink-lower-layer", [][]ent{{sym("evil", outside)}, {reg("evil/pwned", 0o644, []byte("x"))}}},
		{"symlink-chain", [][]ent{{dir("d/", 0o755), sym("d/up", ".."), sym("d/upup", "up/.."), reg("d/upup/pwned", 0o644, []byte("x"))}}},
		{"symlink-mkdir-through", [][]ent{{sym("evil", outside), dir("evil/newdir/", 0o755)}}},
		{"whiteout-through-symlink", [][]ent{{sym("evil", outside)}, {whiteout("evil/.wh.secret")}}},
		{"opaque-through-symlink", [][]ent{{sym("evil", outside)}, {whiteout("evil/.wh..wh..opq")}}},
		{"hardlink-absolute", [][]ent{{hard("passwd", "/etc/passwd")}}},
		{"hardlink-dotdot", [][]ent{{hard("stolen", "../../../../../../.."+secret)}}},
		{"hardlink-through-symlink", [][]ent{{sym("evil", outside), hard("stolen", "evil/secret")}}},
		{"root-becomes-symlink", [][]ent{{sym("./", outside)}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			work := filepath.Join(tmp, "work-"+c.name)
			if err := os.Mkdir(work, 0o755); err != nil {
				t.Fatal(err)
			}
			layers := []v1.Layer{layerOf(t, []ent{dir("ok/", 0o755), reg("ok/file", 0o644, []byte("fine"))})}
			for _, l := range c.layers {
				layers = append(layers, layerOf(t, l))
			}
			img := imageOf(t, v1.Config{Cmd: []string{"/ok/file"}}, layers...)
			ref := writeLayout(t, filepath.Join(work, "layout"), "bad", img)
			dest := filepath.Join(work, "bundle")
			err := Build(context.Background(), ref, dest, Config{Logger: quietLogger()})
			if !errors.Is(err, ErrUnsafeLayer) {
				t.Fatalf("Build = %v, want ErrUnsafeLayer", err)
			}
			t.Logf("refused: %v", err)
			if left := leftovers(t, work, "layout"); len(left) > 0 {
				t.Errorf("left behind in the destination's directory: %v", left)
			}
			if left := leftovers(t, outside, "secret"); len(left) > 0 {
				t.Errorf("created outside the rootfs: %v", left)
			}
			if b, err := os.ReadFile(secret); err != nil || string(b) != "host data" {
				t.Errorf("outside file changed: %q, %v", b, err)
			}
			for _, p := range []string{filepath.Join(tmp, "escape"), filepath.Join(work, "escape"), "/escape", "/tmp/escape-dir"} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was created", p)
				}
			}
		})
	}
}

func TestBuildReplaceAndExists(t *testing.T) {
	tmp := tempDir(t)
	mk := func(content string) string {
		img := imageOf(t, v1.Config{Cmd: []string{"/f"}}, layerOf(t, []ent{reg("f", 0o755, []byte(content))}))
		return writeLayout(t, filepath.Join(tmp, "layout-"+content), "v", img)
	}
	first, second := mk("one"), mk("two")
	dest := filepath.Join(tmp, "bundle")
	if err := Build(context.Background(), first, dest, Config{Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	if err := Build(context.Background(), second, dest, Config{Logger: quietLogger()}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Build without Replace = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "rootfs", "f")); string(b) != "one" {
		t.Fatalf("existing bundle changed to %q", b)
	}
	if err := Build(context.Background(), second, dest, Config{Replace: true, Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "rootfs", "f")); string(b) != "two" {
		t.Fatalf("replaced bundle has %q, want two", b)
	}
	if left := leftovers(t, tmp, "bundle", "layout-one", "layout-two"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if fi, err := os.Stat(dest); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("bundle dir mode %v (%v), want 0700", fi.Mode(), err)
	}
}

func TestBuildErrors(t *testing.T) {
	tmp := tempDir(t)
	okLayer := layerOf(t, []ent{dir("etc/", 0o755), reg("etc/passwd", 0o644, passwd), reg("etc/group", 0o644, group)})
	cases := []struct {
		name string
		ref  func(t *testing.T) string
		ctx  func() context.Context
		want error
	}{
		{"no-command", func(t *testing.T) string {
			return writeLayout(t, filepath.Join(tmp, "nocmd"), "v", imageOf(t, v1.Config{}, okLayer))
		}, nil, ErrInvalidImage},
		{"unknown-user", func(t *testing.T) string {
			return writeLayout(t, filepath.Join(tmp, "nouser"), "v", imageOf(t, v1.Config{Cmd: []string{"x"}, User: "nobody-here"}, okLayer))
		}, nil, ErrInvalidImage},
		{"unknown-tag", func(t *testing.T) string {
			writeLayout(t, filepath.Join(tmp, "notag"), "v", imageOf(t, v1.Config{Cmd: []string{"x"}}, okLayer))
			return "oci:" + filepath.Join(tmp, "notag") + ":other"
		}, nil, ErrInvalidImage},
		{"not-a-layout", func(t *testing.T) string { return "oci:" + tmp }, nil, ErrInvalidImage},
		{"archive-missing", func(t *testing.T) string { return "docker-archive:" + filepath.Join(tmp, "none.tar") }, nil, os.ErrNotExist},
		{"bad-ref", func(t *testing.T) string { return "dir:/x" }, nil, ErrBadReference},
		{"cancelled", func(t *testing.T) string {
			return writeLayout(t, filepath.Join(tmp, "cancel"), "v", imageOf(t, v1.Config{Cmd: []string{"x"}}, okLayer))
		}, func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, context.Canceled},
		{"cancelled-registry", func(t *testing.T) string {
			return pushImage(t, startRegistry(t), "c/c:v", imageOf(t, v1.Config{Cmd: []string{"x"}}, okLayer))
		}, func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, context.Canceled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			if c.ctx != nil {
				ctx = c.ctx()
			}
			out := filepath.Join(tmp, "out-"+c.name)
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			err := Build(ctx, c.ref(t), filepath.Join(out, "bundle"), Config{Logger: quietLogger()})
			if !errors.Is(err, c.want) {
				t.Fatalf("Build = %v, want %v", err, c.want)
			}
			if left := leftovers(t, out); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

// TestGuardTransport: plain HTTP is refused before any connection unless the host is loopback
// or Insecure is set.
func TestGuardTransport(t *testing.T) {
	called := 0
	base := roundTripFunc(func(*http.Request) (*http.Response, error) {
		called++
		return nil, errors.New("base reached")
	})
	cases := []struct {
		url      string
		insecure bool
		reach    bool
	}{
		{"http://10.1.2.3/v2/", false, false},
		{"http://registry.example/v2/", false, false},
		{"http://127.0.0.1:5000/v2/", false, true},
		{"http://[::1]:5000/v2/", false, true},
		{"http://localhost:5000/v2/", false, true},
		{"https://registry.example/v2/", false, true},
		{"http://registry.example/v2/", true, true},
	}
	for _, c := range cases {
		called = 0
		req, _ := http.NewRequest("GET", c.url, nil)
		_, err := (&guardTransport{base: base, insecure: c.insecure}).RoundTrip(req)
		if reached := called == 1; reached != c.reach {
			t.Errorf("%s insecure=%v: reached base = %v (%v), want %v", c.url, c.insecure, reached, err, c.reach)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestBusyboxBundle makes an image from Debian's static busybox, builds the bundle and, as root,
// runs its command chrooted into the rootfs to show the result is runnable.
func TestBusyboxBundle(t *testing.T) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no /bin/busybox (Debian: apt-get install busybox-static)")
	}
	if out, _ := exec.Command("file", "/bin/busybox").Output(); len(out) > 0 && !strings.Contains(string(out), "static") {
		t.Skip("/bin/busybox is not statically linked")
	}
	img := imageOf(t, v1.Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hello-from-$X"}, Env: []string{"X=bundle"}},
		layerOf(t, []ent{dir("bin/", 0o755), reg("bin/busybox", 0o755, bb), sym("bin/sh", "busybox"), dir("axocoatl/", 0o755)}))
	tmp := tempDir(t)
	dest := filepath.Join(tmp, "busybox")
	if err := Build(context.Background(), writeLayout(t, filepath.Join(tmp, "layout"), "latest", img), dest, Config{Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	spec := readSpec(t, dest)
	if want := []string{"/bin/sh", "-c", "echo hello-from-$X"}; !slices.Equal(spec.Process.Args, want) {
		t.Fatalf("args %q, want %q", spec.Process.Args, want)
	}
	got, err := os.ReadFile(filepath.Join(dest, "rootfs", "bin", "busybox"))
	if err != nil || !slices.Equal(got, bb) {
		t.Fatalf("rootfs/bin/busybox differs from /bin/busybox (%v)", err)
	}
	if os.Geteuid() != 0 {
		t.Log("not root: not running the bundle's command")
		return
	}
	cmd := exec.Command(spec.Process.Args[0], spec.Process.Args[1:]...)
	cmd.Env = spec.Process.Env
	cmd.Dir = "/"
	cmd.SysProcAttr = &unix.SysProcAttr{Chroot: filepath.Join(dest, "rootfs")}
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "hello-from-bundle" {
		t.Fatalf("running the bundle's command: %q, %v", out, err)
	}
}
