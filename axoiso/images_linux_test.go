package axoiso

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/ociimage"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/testutil/testguest"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// Container images in both isolating tiers: the same bundles, run by executors built from
// configs, give the same outputs in Oci and in a microVM; the operator's choice and the fallback
// put them in the VM and the envelope says so; a Python tool with a base image imports what the
// default guest root lacks, in both tiers.

// imageBundle writes a busybox bundle named name whose process is /bin/sh -c script.
func imageBundle(t *testing.T, tools, name, script string, uid uint32, env []string, cwd string, extra func(rootfs string)) {
	t.Helper()
	rootfs := filepath.Join(tools, name, "rootfs")
	testutil.BusyboxTree(t, rootfs, "sh", "cat", "id", "ls", "hostname", "printf", "head", "touch", "mknod", "tr", "grep", "pwd", "wc")
	for _, d := range []string{"etc", "work", "tmp", "proc", "dev"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if extra != nil {
		extra(rootfs)
	}
	cfg, _ := json.Marshal(map[string]any{
		"ociVersion": "1.0.2",
		"root":       map[string]any{"path": "rootfs"},
		"process":    map[string]any{"args": []string{"/bin/sh", "-c", script}, "env": env, "cwd": cwd, "user": map[string]any{"uid": uid, "gid": uid}},
	})
	write(t, filepath.Join(tools, name, "config.json"), string(cfg))
	// A VM's boot counts in the call's time: generous, for a loaded host.
	write(t, filepath.Join(tools, name, "tool.json"), `{"runtime":"ContainerImage","timeout_ms":60000}`)
}

// The conformance table: bundles and what each must output (or fail with) in every tier.
const (
	confEcho = `read -r l < /axocoatl/input.json; printf '{"in":%s,"uid":"%s","cwd":"%s","greet":"%s","host":"%s","root":"%s"}' "$l" "$(id -u)" "$(pwd)" "$GREETING" "$(hostname)" "$(ls / | tr '\n' ' ')" > /axocoatl/output.json`
	confFail = `echo failing >&2; exit 3`
	// As the microvm package's hostile test: every probe's result in the output.
	confHostile = `r=""
add() { r="$r\"$1\":\"$2\","; }
if cat /evil/mem >/dev/null 2>&1; then add dev readable; else add dev denied; fi
add suid "$(/evil/suid)"
add abs "$(cat /evil/abs 2>&1 | head -c 40)"
add secret "$(cat /evil/secret 2>&1 | head -c 40)"
if touch /newfile 2>/dev/null || touch /etc/marker 2>/dev/null; then add rootfs writable; else add rootfs readonly; fi
if mknod /tmp/m c 1 1 2>/dev/null; then add mknod ok; else add mknod denied; fi
add capeff "$(grep CapEff /proc/self/status | tr -d ' \t')"
if echo 1 > /proc/sys/kernel/printk 2>/dev/null; then add procsys writable; else add procsys readonly; fi
printf '{%s"end":1}' "$r" > /axocoatl/output.json`
)

func hostileRootfs(t *testing.T) func(string) {
	t.Helper()
	gcc := testutil.RequiresBinary(t, "gcc", "gcc")
	src := filepath.Join(t.TempDir(), "euid.c")
	write(t, src, "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d\", (int)geteuid());return 0;}\n")
	bin := filepath.Join(t.TempDir(), "euid")
	if out, err := exec.Command(gcc, "-static", "-O1", "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("gcc -static: %v: %s", err, out)
	}
	return func(rootfs string) {
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		evil := filepath.Join(rootfs, "evil")
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

// imageExecutor builds an executor from c with the test's own state and run dirs.
func imageExecutor(t *testing.T, c Config) *executor.Executor {
	t.Helper()
	c.Oci.StateRoot = t.TempDir()
	c.VM.RunDir = filepath.Join(t.TempDir(), "vm")
	c.CacheDir = t.TempDir()
	e, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestImagesInBothTiers(t *testing.T) {
	data := testguest.DataDir(t)
	testutil.RequiresBusybox(t)
	tools := t.TempDir()
	_ = os.Chmod(tools, 0o755)
	imageBundle(t, tools, "echo", confEcho, 1000, []string{"PATH=/bin", "GREETING=hi"}, "/work", nil)
	imageBundle(t, tools, "fail", confFail, 0, []string{"PATH=/bin"}, "/", nil)
	imageBundle(t, tools, "hostile", confHostile, 0, []string{"PATH=/bin"}, "/", hostileRootfs(t))
	// A base: the guest root with one more module (the default guest root lacks it).
	vmRoot, err := microvm.RuntimeRoot(filepath.Join(data, "vm"))
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(tools, "pybase")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// Hard links: the guest root is not copied, and a new file does not change it.
	if out, err := exec.Command("cp", "-al", vmRoot, filepath.Join(base, "rootfs")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	write(t, filepath.Join(base, "rootfs", "opt", "axolib", "axobase_marker.py"), "GREETING = 'from the base image'\n")
	write(t, filepath.Join(base, "config.json"), `{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["python3"],"cwd":"/","env":["PATH=/usr/bin:/bin","PYTHONPATH=/opt/axolib"]}}`)
	write(t, filepath.Join(tools, "uses-base", "tool.json"), `{"runtime":"Python","entrypoint":"main.py","base":"pybase","timeout_ms":60000}`)
	write(t, filepath.Join(tools, "uses-base", "main.py"), "import json, axobase_marker\njson.dump({'greeting': axobase_marker.GREETING}, open('/axocoatl/output.json', 'w'))\n")
	write(t, filepath.Join(tools, "no-base", "tool.json"), `{"runtime":"Python","entrypoint":"main.py","timeout_ms":60000}`)
	write(t, filepath.Join(tools, "no-base", "main.py"), "import axobase_marker\n")

	ctx := context.Background()
	vmCfg := Config{ToolsRoot: tools, DataDir: data, Isolation: map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: isolation.TierMicroVM}}
	ociCfg := Config{ToolsRoot: tools, DataDir: data}
	ociOff := Config{ToolsRoot: tools, DataDir: data, DisableTiers: []string{"Oci"}}
	oci, vm, fallback := imageExecutor(t, ociCfg), imageExecutor(t, vmCfg), imageExecutor(t, ociOff)

	type got struct {
		res *executor.Result
		err error
	}
	runIn := func(e *executor.Executor, tool string) got {
		res, err := e.Execute(ctx, tool, []byte(`{"n":1}`))
		return got{res, err}
	}
	for _, tool := range []string{"echo", "fail", "hostile"} {
		t.Run(tool, func(t *testing.T) {
			o, v := runIn(oci, tool), runIn(vm, tool)
			if o.err != nil || v.err != nil {
				// Failures must be the same failure.
				if isolation.KindName(o.err) != isolation.KindName(v.err) {
					t.Fatalf("Oci: %v; VM: %v", o.err, v.err)
				}
				var oe, ve *isolation.Error
				if asErr(o.err, &oe) && asErr(v.err, &ve) && (oe.ExitCode != ve.ExitCode || !strings.Contains(ve.Stderr, strings.TrimSpace(oe.Stderr))) {
					t.Errorf("Oci: exit %d %q; VM: exit %d %q", oe.ExitCode, oe.Stderr, ve.ExitCode, ve.Stderr)
				}
				return
			}
			if o.res.Tier != isolation.TierOCI || v.res.Tier != isolation.TierMicroVM || v.res.Ideal != isolation.TierMicroVM || v.res.Degraded {
				t.Errorf("tiers: Oci run %s, VM run %s (ideal %s, degraded %v)", o.res.Tier, v.res.Tier, v.res.Ideal, v.res.Degraded)
			}
			if string(o.res.Output) != string(v.res.Output) {
				t.Errorf("outputs differ:\n  Oci: %s\n  VM:  %s", o.res.Output, v.res.Output)
			}
			t.Logf("%s: %s", tool, v.res.Output)
		})
	}
	t.Run("fallback without Oci", func(t *testing.T) {
		g := runIn(fallback, "echo")
		if g.err != nil {
			t.Fatal(g.err)
		}
		if g.res.Tier != isolation.TierMicroVM || g.res.Ideal != isolation.TierOCI || g.res.Degraded {
			t.Errorf("tier %s ideal %s degraded %v; want Firecracker, Oci, false", g.res.Tier, g.res.Ideal, g.res.Degraded)
		}
	})
	t.Run("python on a base", func(t *testing.T) {
		for name, e := range map[string]*executor.Executor{"Oci": fallbackToOci(t, tools, data), "Firecracker": vm} {
			g := runIn(e, "uses-base")
			if g.err != nil {
				t.Fatalf("%s: %v", name, g.err)
			}
			if string(g.res.Output) != `{"greeting": "from the base image"}` || g.res.Tier.String() != name {
				t.Errorf("%s: ran in %s: %s", name, g.res.Tier, g.res.Output)
			}
		}
		// The default root lacks the module.
		_, err := vm.Execute(ctx, "no-base", []byte(`{}`))
		var ie *isolation.Error
		if !asErr(err, &ie) || ie.Kind != isolation.ErrToolFailed || !strings.Contains(ie.Stderr, "No module named 'axobase_marker'") {
			t.Errorf("without the base: %v, want the import to fail", err)
		}
	})
}

// fallbackToOci is an executor whose microVM tier is disabled: script tools run in Oci.
func fallbackToOci(t *testing.T, tools, data string) *executor.Executor {
	return imageExecutor(t, Config{ToolsRoot: tools, DataDir: data, DisableTiers: []string{"Firecracker"}})
}

func asErr(err error, target **isolation.Error) bool {
	ie, ok := err.(*isolation.Error)
	if ok {
		*target = ie
	}
	return ok
}

// busyboxImage is an OCI image (one layer: a static busybox and its applets) whose process is
// `/bin/sh -c script` as uid 1000 in /work, with GREETING set: what `axoiso bundle` turns into a
// bundle from oci: layouts and docker-archive: files.
func busyboxImage(t *testing.T, script string) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin/", "etc/", "work/", "tmp/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))}, bb)
	for _, a := range []string{"sh", "cat", "id", "ls", "hostname", "printf", "tr", "pwd"} {
		add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tarBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{Cmd: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/bin", "GREETING=from-an-image"}, WorkingDir: "/work", User: "1000:1000"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// An image from an OCI layout (oci:DIR:TAG) and from a docker-archive: file, bundled as `axoiso
// bundle` does, runs in the microVM tier with the same output as in Oci.
func TestBundledImagesInVM(t *testing.T) {
	data := testguest.DataDir(t)
	tools := t.TempDir()
	_ = os.Chmod(tools, 0o755)
	img := busyboxImage(t, confEcho)
	lay := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag("example.test/bb:v1")
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "bb.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for tool, ref := range map[string]string{"from-oci": "oci:" + lay + ":v1", "from-archive": "docker-archive:" + archive + ":example.test/bb:v1"} {
		if err := ociimage.Build(ctx, ref, filepath.Join(tools, tool), ociimage.Config{Logger: slog.New(slog.DiscardHandler)}); err != nil {
			t.Fatalf("bundle %s: %v", ref, err)
		}
		write(t, filepath.Join(tools, tool, "tool.json"), `{"runtime":"ContainerImage","timeout_ms":60000}`)
	}
	vm := imageExecutor(t, Config{ToolsRoot: tools, DataDir: data, Isolation: map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: isolation.TierMicroVM}})
	oci := imageExecutor(t, Config{ToolsRoot: tools, DataDir: data})
	for _, tool := range []string{"from-oci", "from-archive"} {
		t.Run(tool, func(t *testing.T) {
			v, err := vm.Execute(ctx, tool, []byte(`{"n":2}`))
			if err != nil {
				t.Fatal(err)
			}
			o, err := oci.Execute(ctx, tool, []byte(`{"n":2}`))
			if err != nil {
				t.Fatal(err)
			}
			if v.Tier != isolation.TierMicroVM || o.Tier != isolation.TierOCI || string(v.Output) != string(o.Output) {
				t.Fatalf("VM (%s): %s\nOci (%s): %s", v.Tier, v.Output, o.Tier, o.Output)
			}
			if !strings.Contains(string(v.Output), `"uid":"1000"`) || !strings.Contains(string(v.Output), `"greet":"from-an-image"`) || !strings.Contains(string(v.Output), `"cwd":"/work"`) {
				t.Errorf("the image's user, env or cwd did not apply: %s", v.Output)
			}
		})
	}
}
