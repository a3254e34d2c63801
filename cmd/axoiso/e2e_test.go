package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/wasmbuild"
)

// requiresRoot skips tests that create containers.
func requiresRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (containers)")
	}
}

// requiresOci skips when this host (or this build: the Oci tier needs `-tags seccomp`) cannot
// run containers, with the tier's own reason.
func requiresOci(t *testing.T) {
	t.Helper()
	requiresRoot(t)
	_, out, _ := runAxoiso(t, "", "tiers", "--json")
	var tiers []struct {
		Tier      string
		Available bool
		Reason    string
	}
	json.Unmarshal([]byte(out), &tiers)
	for _, tr := range tiers {
		if tr.Tier == "Oci" && !tr.Available {
			t.Skip("the Oci tier is unavailable: " + tr.Reason)
		}
	}
}

const busybox = "/bin/busybox"

func requiresBusybox(t *testing.T) {
	t.Helper()
	testutil.RequiresBusybox(t)
}

// wasmGuest builds the Wasm tier's test guest (one module, its behaviour picked by input.mode).
func wasmGuest(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := wasmbuild.Cached(ctx, "../../sandbox/wasm/testdata/guest", filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache"), wasmbuild.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}

// configFile writes an axoiso config and returns its path.
func configFile(t *testing.T, cfg map[string]any) string {
	t.Helper()
	b, _ := json.Marshal(cfg)
	p := filepath.Join(t.TempDir(), "axoiso.json")
	writeFile(t, p, b, 0o644)
	return p
}

// TestExitCodesWithRealTools drives every tool-side error class through the CLI with a real
// Wasm module.
func TestExitCodesWithRealTools(t *testing.T) {
	mod, err := os.ReadFile(wasmGuest(t))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "guest/tool.json"), []byte(`{"runtime":"WasmCompiled","entrypoint":"guest.wasm","memory_mb":32,"timeout_ms":5000}`), 0o644)
	writeFile(t, filepath.Join(root, "guest/guest.wasm"), mod, 0o644)
	cfg := configFile(t, map[string]any{"cache_dir": t.TempDir(), "disable_tiers": []string{"Oci", "Firecracker"}})

	tests := []struct {
		name, input string
		extra       []string
		code        int
		says        string
	}{
		{"ok", `{"mode":"greet","name":"CLI"}`, nil, 0, ""},
		{"tool failed", `{"mode":"fail","code":3}`, nil, 5, "exited with code 3"},
		{"output missing", `{"mode":"nooutput"}`, nil, 5, "output missing"},
		{"output invalid", `{"mode":"invalid"}`, nil, 5, "output invalid"},
		{"output too large", `{"mode":"big","size":2000000}`, nil, 5, "output too large"},
		{"timeout", `{"mode":"spin"}`, []string{"--timeout", "300ms"}, 6, "timeout"},
		{"memory limit", `{"mode":"bomb"}`, nil, 7, "memory limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"run", "--tools", root, "--config", cfg, "--input", tt.input}, tt.extra...)
			code, out, errs := runAxoiso(t, "", append(args, "guest")...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tt.code, out, errs)
			}
			if tt.code == 0 {
				if !strings.Contains(out, `"greeting":"Hello, CLI!"`) {
					t.Fatalf("stdout %q", out)
				}
				return
			}
			if !strings.Contains(errs, tt.says) {
				t.Fatalf("stderr %q does not say %q", errs, tt.says)
			}
			if tt.name == "tool failed" && !strings.Contains(errs, "the last words") {
				t.Errorf("stderr tail missing from %q", errs)
			}
		})
	}
}

// busyboxImage writes a `docker save`-style tarball of an image holding only a static busybox
// whose command copies its input to its output in upper case.
func busyboxImage(t *testing.T) string {
	t.Helper()
	return busyboxImageLabels(t, nil)
}

// busyboxImageLabels is busyboxImage with image labels.
func busyboxImageLabels(t *testing.T, labels map[string]string) string {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, d := range []string{"bin/", "axocoatl/", "tmp/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	for _, l := range []string{"sh", "tr", "cat"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + l, Typeflag: tar.TypeSymlink, Linkname: "busybox"})
	}
	tw.Close()
	//lint:ignore SA1019 an in-memory layer: LayerFromOpener would only wrap the same bytes
	l, err := tarball.LayerFromReader(bytes.NewReader(layer.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"tr a-z A-Z < /axocoatl/input.json > /axocoatl/output.json"},
		Env:        []string{"PATH=/bin"},
		Labels:     labels,
	})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference("axocoatl.test/upper:1")
	p := filepath.Join(t.TempDir(), "upper.tar")
	if err := tarball.WriteToFile(p, ref, img); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBundleThenRun is the OCI user story: an image becomes a tool with `axoiso bundle`, and
// `axoiso run` runs it in a container.
func TestBundleThenRun(t *testing.T) {
	requiresOci(t)
	requiresBusybox(t)
	root := t.TempDir()
	state := t.TempDir()
	cfg := configFile(t, map[string]any{"cache_dir": t.TempDir(), "oci": map[string]any{"state_root": state, "pool_size": -1}})
	archive := busyboxImage(t)

	code, out, errs := runAxoiso(t, "", "bundle", "--tools", root, "--from", "docker-archive:"+archive, "upper")
	if code != 0 {
		t.Fatalf("bundle: exit %d: %s", code, errs)
	}
	if strings.TrimSpace(out) != filepath.Join(root, "upper") {
		t.Errorf("bundle printed %q", out)
	}
	if code, _, errs := runAxoiso(t, "", "bundle", "--tools", root, "--from", "docker-archive:"+archive, "upper"); code == 0 || !strings.Contains(errs, "--replace") {
		t.Errorf("second bundle without --replace: exit %d, %q", code, errs)
	}
	for _, bad := range [][]string{{"--from", "docker-archive:" + archive, "../up"}, {"upper2"}, {"--from", "ftp://x", "upper3"}} {
		if code, _, errs := runAxoiso(t, "", append([]string{"bundle", "--tools", root}, bad...)...); code != 2 {
			t.Errorf("bundle %v: exit %d (%s), want 2", bad, code, errs)
		}
	}

	code, out, errs = runAxoiso(t, "", "run", "--json", "--tools", root, "--config", cfg, "--input", `{"say":"hi"}`, "upper")
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, errs)
	}
	var env struct {
		Output   map[string]string
		Tier     string
		Degraded bool
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatal(err)
	}
	if env.Output["SAY"] != "HI" || env.Tier != "Oci" || env.Degraded {
		t.Fatalf("envelope = %s", out)
	}
	if ents, _ := os.ReadDir(state); len(ents) > 0 {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "axocoatl-") {
				t.Errorf("state dir left: %s", e.Name())
			}
		}
	}
}

// TestShellFallsBackToOci: with no microVM, a Shell tool runs in a container on the runtime
// root — a reported downgrade — and --strict refuses it.
func TestShellFallsBackToOci(t *testing.T) {
	requiresOci(t)
	requiresBusybox(t)
	rt := t.TempDir()
	if err := os.MkdirAll(filepath.Join(rt, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", busybox, filepath.Join(rt, "bin/busybox")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	for _, l := range []string{"sh", "wc", "cat"} {
		os.Symlink("busybox", filepath.Join(rt, "bin", l))
	}
	os.MkdirAll(filepath.Join(rt, "axocoatl"), 0o755)
	os.MkdirAll(filepath.Join(rt, "tmp"), 0o755)

	root := t.TempDir()
	writeFile(t, filepath.Join(root, "count/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"run.sh"}`), 0o644)
	writeFile(t, filepath.Join(root, "stray/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"run.sh"}`), 0o644)
	writeFile(t, filepath.Join(root, "stray/run.sh"), []byte(`printf '{"s":"a\377b"}' > /axocoatl/output.json`), 0o644)
	writeFile(t, filepath.Join(root, "count/run.sh"), []byte(`n=$(wc -c < /axocoatl/input.json); echo "{\"bytes\":$n,\"uid\":$(id -u 2>/dev/null || echo -1)}" > /axocoatl/output.json`), 0o644)
	cfg := configFile(t, map[string]any{
		"cache_dir": t.TempDir(), "disable_tiers": []string{"Firecracker"},
		"oci": map[string]any{"state_root": t.TempDir(), "runtime_root": rt, "pool_size": -1},
	})

	code, out, errs := runAxoiso(t, "", "run", "--json", "--tools", root, "--config", cfg, "--input", `{"abc":1}`, "count")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var env struct {
		Output   map[string]int
		Tier     string
		Ideal    string `json:"ideal_tier"`
		Degraded bool
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatal(err)
	}
	if env.Output["bytes"] != len(`{"abc":1}`) || env.Output["uid"] == 0 || env.Tier != "Oci" || env.Ideal != "Firecracker" || !env.Degraded {
		t.Fatalf("envelope = %s", out)
	}
	if !strings.Contains(errs, "weaker than its ideal tier Firecracker") {
		t.Errorf("no downgrade warning on stderr: %q", errs)
	}
	code, out, errs = runAxoiso(t, "", "run", "--strict", "--tools", root, "--config", cfg, "--input", `{}`, "count")
	if code != 4 || out != "" || !strings.Contains(errs, "downgrade refused") {
		t.Fatalf("--strict: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	// Output bytes that are not UTF-8 (valid JSON to json.Valid) are printed as U+FFFD.
	for _, extra := range [][]string{nil, {"--json"}} {
		args := append([]string{"run", "--tools", root, "--config", cfg, "--input", `{}`}, extra...)
		code, out, errs = runAxoiso(t, "", append(args, "stray")...)
		if code != 0 || !utf8.ValidString(out) || !strings.Contains(out, "a\uFFFDb") {
			t.Errorf("run %v stray: exit %d, stdout %q, stderr %q", extra, code, out, errs)
		}
	}
}

// TestBundleFixes: a bare path as --from says which transport was meant; the reference is checked
// before the destination; "--replace" is hinted once; --replace keeps a hand-written tool.json;
// a bundle-only tool takes its description and input schema from the image's labels.
func TestBundleFixes(t *testing.T) {
	requiresBusybox(t)
	root := t.TempDir()
	archive := busyboxImageLabels(t, map[string]string{
		"org.opencontainers.image.description": "Upper-cases its input",
		"io.axocoatl.input-schema":             `{"type":"object","properties":{"say":{"type":"string"}},"required":["say"]}`,
	})
	// A bare path: the file, and a directory.
	for _, from := range []string{archive, filepath.Dir(archive)} {
		code, _, errs := runAxoiso(t, "", "bundle", "--tools", root, "--from", from, "upper")
		if code != 2 || !strings.Contains(errs, "did you mean") || !strings.Contains(errs, "oci:"+from) {
			t.Errorf("bundle --from %s: exit %d, %q", from, code, errs)
		}
	}
	if code, _, errs := runAxoiso(t, "", "bundle", "--tools", root, "--from", archive[:len(archive)-4]+"-missing.tar", "upper"); code != 2 || !strings.Contains(errs, "docker-archive:") {
		t.Errorf("a missing .tar path: exit %d, %q", code, errs)
	}

	code, _, errs := runAxoiso(t, "", "bundle", "--tools", root, "--from", "docker-archive:"+archive, "upper")
	if code != 0 {
		t.Fatalf("bundle: exit %d: %s", code, errs)
	}
	// The labels made the tool's description and schema.
	code, out, errs := runAxoiso(t, "", "tools", "--json", "--tools", root)
	if code != 0 || !strings.Contains(out, "Upper-cases its input") || !strings.Contains(out, `"required"`) {
		t.Errorf("tools after a labelled bundle: exit %d, %s %s", code, out, errs)
	}
	// The destination exists, but a wrong reference is what is reported; the hint comes once.
	code, _, errs = runAxoiso(t, "", "bundle", "--tools", root, "--from", "oci:"+filepath.Join(t.TempDir(), "nothing"), "upper")
	if code == 0 || strings.Contains(errs, "exists") {
		t.Errorf("bad reference onto an existing bundle: exit %d, %q (want the reference's error)", code, errs)
	}
	code, _, errs = runAxoiso(t, "", "bundle", "--tools", root, "--from", "docker-archive:"+archive, "upper")
	if code == 0 || strings.Count(errs, "replace") != 1 {
		t.Errorf("existing bundle: exit %d, %q (want one --replace hint)", code, errs)
	}
	// A hand-written tool.json survives --replace.
	hand := `{"runtime":"ContainerImage","description":"written by hand","timeout_ms":1234}`
	writeFile(t, filepath.Join(root, "upper", "tool.json"), []byte(hand), 0o644)
	if code, _, errs := runAxoiso(t, "", "bundle", "--replace", "--tools", root, "--from", "docker-archive:"+archive, "upper"); code != 0 {
		t.Fatalf("bundle --replace: exit %d: %s", code, errs)
	}
	if b, err := os.ReadFile(filepath.Join(root, "upper", "tool.json")); err != nil || string(b) != hand {
		t.Errorf("tool.json after --replace = %q, %v; want the hand-written one", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "upper", "rootfs", "bin", "busybox")); err != nil {
		t.Errorf("the replaced bundle has no rootfs: %v", err)
	}
}
