// Package examples holds the example tools of the README's "Writing tools", one folder per kind
// of tool; its tests run each of them end to end through the built `axoiso` binary, on the tier
// it is meant for, and check what the README says each tier gives a tool (uid, working
// directory, environment, writable paths, the guest's Python and its modules, stdout and stderr
// apart).
package examples

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/testutil/testguest"
	"github.com/axocoatl/isolation/internal/wasmbuild"
)

func TestMain(m *testing.M) { os.Exit(testutil.RunRemovingBuiltCLI(m)) }

// axoiso runs the built CLI and returns its exit code, stdout and stderr.
func axoiso(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(testutil.BuiltCLI(t, ".."), "axoiso"), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("axoiso %v: %v", args, err)
	return 0, "", ""
}

// envelope is what `axoiso run --json` prints.
type envelope struct {
	Output    json.RawMessage
	Tier      string
	IdealTier string `json:"ideal_tier"`
	Degraded  bool
	Stdout    string
	Stderr    string
}

// call runs `axoiso run --json` and returns the envelope, failing t on a non-zero exit.
func call(t *testing.T, args ...string) envelope {
	t.Helper()
	code, out, errs := axoiso(t, append([]string{"run", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("axoiso run %v: exit %d: %s", args, code, errs)
	}
	var env envelope
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatalf("envelope %q: %v", out, err)
	}
	return env
}

// output decodes the envelope's output into v.
func (e envelope) output(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(e.Output, v); err != nil {
		t.Fatalf("output %s: %v", e.Output, err)
	}
}

// config writes an axoiso config: private cache, state and run dirs, no warm pools (every call
// is a cold one, as a first call is), merged with extra.
func config(t *testing.T, extra map[string]any) string {
	t.Helper()
	cfg := map[string]any{
		"cache_dir": t.TempDir(),
		"oci":       map[string]any{"state_root": t.TempDir(), "pool_size": -1},
		"vm":        map[string]any{"run_dir": t.TempDir()},
	}
	for k, v := range extra {
		cfg[k] = v
	}
	b, _ := json.Marshal(cfg)
	p := filepath.Join(t.TempDir(), "axoiso.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// copyTools copies the example tools folder src (relative to examples/) to a temporary tools
// root, so that builds write nothing into the source tree.
func copyTools(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	// The folders are read by the tiers' unprivileged uids (VMs, containers' user namespaces).
	if err := filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o755)
		}
		return os.Chmod(p, 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	return dst
}

// requiresTier skips t unless the tier is available with cfg, with the tier's own reason.
func requiresTier(t *testing.T, cfg, tier string) {
	t.Helper()
	_, out, _ := axoiso(t, "tiers", "--json", "--config", cfg)
	var tiers []struct {
		Tier      string
		Available bool
		Reason    string
	}
	if err := json.Unmarshal([]byte(out), &tiers); err != nil {
		t.Fatalf("tiers --json %q: %v", out, err)
	}
	for _, tr := range tiers {
		if tr.Tier == tier && !tr.Available {
			t.Skipf("the %s tier is unavailable: %s", tier, tr.Reason)
		}
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestWasmGoExamples: the Go tools of examples/tools, built with `go run ./examples/build` (the
// snapshot-mode hello-wasm and the command wordcount), run in the Wasm tier.
func TestWasmGoExamples(t *testing.T) {
	tools := copyTools(t, "tools")
	build := exec.Command(wasmbuild.GoCommand(), "run", "./examples/build", tools)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go run ./examples/build: %v\n%s", err, out)
	}
	cfg := config(t, nil)
	hello := call(t, "--strict", "--config", cfg, "--tools", tools, "--input", `{"name":"world"}`, "hello-wasm")
	var greeting struct{ Greeting string }
	hello.output(t, &greeting)
	if greeting.Greeting != "Hello, world!" || hello.Tier != "Wasmtime" {
		t.Errorf("hello-wasm: %+v", hello)
	}
	wc := call(t, "--strict", "--config", cfg, "--tools", tools, "--input", `{"text":"to be or not to be","top":1}`, "wordcount")
	var counts struct {
		Words int
		Top   []struct {
			Word  string
			Count int
		}
	}
	wc.output(t, &counts)
	if counts.Words != 6 || len(counts.Top) != 1 || counts.Top[0].Count != 2 || wc.Tier != "Wasmtime" {
		t.Errorf("wordcount: %s (tier %s)", wc.Output, wc.Tier)
	}
}

// TestWasmCExample: a C tool compiled with clang's wasm32-wasi target runs in the Wasm tier; its
// stdout and stderr come back apart.
func TestWasmCExample(t *testing.T) {
	clang := ""
	for _, c := range []string{"clang", "clang-14"} {
		if p, err := exec.LookPath(c); err == nil {
			clang = p
			break
		}
	}
	if clang == "" {
		t.Skip("no clang (apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32)")
	}
	probe := filepath.Join(t.TempDir(), "probe.c")
	if err := os.WriteFile(probe, []byte("#include <stdio.h>\nint main(void){return 0;}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(clang, "--target=wasm32-wasi", "-o", probe+".wasm", probe).CombinedOutput(); err != nil {
		t.Skipf("%s cannot build for wasm32-wasi (apt-get install lld-14 wasi-libc libclang-rt-14-dev-wasm32): %s", clang, out)
	}
	tools := copyTools(t, "wasm-c/tools")
	if out, err := exec.Command("sh", "wasm-c/build.sh", tools).CombinedOutput(); err != nil {
		t.Fatalf("wasm-c/build.sh: %v\n%s", err, out)
	}
	input := `{"a":[1,2.5e3,{"b":"x\"y","c":[true,false,null]}],"d":-4}`
	env := call(t, "--strict", "--config", config(t, nil), "--tools", tools, "--input", input, "jsonstats")
	var got map[string]any
	env.output(t, &got)
	want := map[string]any{"bytes": float64(len(input)), "objects": 2.0, "arrays": 2.0, "strings": 5.0, "numbers": 3.0,
		"literals": 3.0, "max_depth": 4.0, "language": "C"}
	if !reflect.DeepEqual(got, want) || env.Tier != "Wasmtime" {
		t.Errorf("jsonstats: %s in %s, want %v", env.Output, env.Tier, want)
	}
	if env.Stdout != "jsonstats: done\n" || !strings.Contains(env.Stderr, "jsonstats: scanned") || strings.Contains(env.Stderr, "done") {
		t.Errorf("stdout %q and stderr %q are not apart", env.Stdout, env.Stderr)
	}
}

// guestConfig returns a config whose data dir holds a guest prepared with this tree's agent (the
// microVM tier's guest, whose root is also the Oci tier's runtime root) and that data dir, or skips.
func guestConfig(t *testing.T, extra map[string]any) (cfg, dataDir string) {
	t.Helper()
	dataDir = testguest.DataDir(t)
	if extra == nil {
		extra = map[string]any{}
	}
	extra["data_dir"] = dataDir
	return config(t, extra), dataDir
}

// TestPythonExample: examples/python's stats tool in a microVM on the default guest root, and
// what that root's Python has (the README's list).
func TestPythonExample(t *testing.T) {
	cfg, _ := guestConfig(t, nil)
	requiresTier(t, cfg, "Firecracker")
	tools := copyTools(t, "python/tools")
	env := call(t, "--strict", "--config", cfg, "--tools", tools, "--input", `{"numbers":[1,2,3,4,10]}`, "stats")
	var stats struct {
		Count     int
		Mean      float64
		Median    float64
		Quartiles []float64
		Python    string
	}
	env.output(t, &stats)
	if stats.Count != 5 || stats.Mean != 4 || stats.Median != 3 || len(stats.Quartiles) != 3 || env.Tier != "Firecracker" {
		t.Errorf("stats: %s in %s", env.Output, env.Tier)
	}
	if !strings.HasPrefix(stats.Python, "3.11.") {
		t.Errorf("guest Python %q, the README says 3.11", stats.Python)
	}
	if env.Stdout != "stats: done\n" || env.Stderr != "stats: 5 numbers\n" {
		t.Errorf("stdout %q, stderr %q", env.Stdout, env.Stderr)
	}

	// The README's list of what the guest root's Python has and lacks.
	present := []string{"json", "re", "statistics", "decimal", "datetime", "zoneinfo", "hashlib", "ssl",
		"zlib", "bz2", "lzma", "gzip", "zipfile", "csv", "ctypes", "uuid", "xml.etree.ElementTree",
		"urllib.request", "asyncio", "multiprocessing", "subprocess", "unicodedata"}
	absent := []string{"sqlite3", "readline", "curses", "tkinter", "venv", "ensurepip", "pip", "distutils",
		"pydoc", "idlelib", "lib2to3"}
	probe := t.TempDir()
	writeTool(t, probe, "pymods", `{"runtime":"Python","entrypoint":"main.py","timeout_ms":60000}`, "main.py", `import importlib, json, os, sys
ok = {}
for m in json.load(open("/axocoatl/input.json"))["modules"]:
    try:
        importlib.import_module(m)
        ok[m] = True
    except Exception:
        ok[m] = False
json.dump({"ok": ok, "path": sys.path, "flags": [sys.flags.ignore_environment, sys.flags.no_user_site, sys.flags.dont_write_bytecode],
           "tzdata": os.path.isdir("/usr/share/zoneinfo")}, open("/axocoatl/output.json", "w"))
`)
	in, _ := json.Marshal(map[string]any{"modules": append(append([]string{}, present...), absent...)})
	env = call(t, "--strict", "--config", cfg, "--tools", probe, "--input", string(in), "pymods")
	var mods struct {
		OK     map[string]bool
		Path   []string
		Flags  []int
		Tzdata bool
	}
	env.output(t, &mods)
	for _, m := range present {
		if !mods.OK[m] {
			t.Errorf("the guest's Python cannot import %s (the README lists it as present)", m)
		}
	}
	for _, m := range absent {
		if mods.OK[m] {
			t.Errorf("the guest's Python imports %s (the README lists it as absent)", m)
		}
	}
	if len(mods.Path) == 0 || mods.Path[0] != "/axocoatl/tool" || !reflect.DeepEqual(mods.Flags, []int{1, 1, 1}) || mods.Tzdata {
		t.Errorf("sys.path %v, flags (-E, -s, -B) %v, tzdata %v", mods.Path, mods.Flags, mods.Tzdata)
	}
}

// writeTool writes a tool folder root/name with its tool.json and one entry file.
func writeTool(t *testing.T, root, name, manifest, entry, content string) {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for f, c := range map[string]string{"tool.json": manifest, entry: content} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// sysinfo is what examples/shell's sysinfo tool reports.
type sysinfo struct {
	UID, GID    int
	Cwd         string
	Hostname    string
	Path        string
	Home        string
	Greeting    string
	Writable    []string
	Env         []string
	InputSHA256 string `json:"input_sha256"`
}

// TestShellExample: examples/shell's sysinfo tool in a microVM, and on the Oci tier (the
// fallback, on the guest root as the runtime root); what it reports is the README's table.
func TestShellExample(t *testing.T) {
	testutil.RequiresRoot(t, "containers and VMs")
	tools := copyTools(t, "shell/tools")
	input := `{"from":"the test"}`
	for _, tc := range []struct {
		tier     string
		extra    map[string]any
		degraded bool
		want     sysinfo
	}{
		{"Firecracker", nil, false, sysinfo{UID: 65534, GID: 65534, Cwd: "/axocoatl/tool", Path: "/usr/local/bin:/usr/bin:/bin", Home: "/tmp",
			Writable: []string{"/tmp", "/axocoatl"}, Env: []string{"GREETING", "HOME", "LANG", "PATH", "PWD"}}},
		{"Oci", map[string]any{"disable_tiers": []string{"Firecracker"}}, true, sysinfo{UID: 65534, GID: 65534, Cwd: "/axocoatl/tool", Hostname: "axocoatl",
			Path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", Home: "/tmp", Writable: []string{"/tmp", "/dev/shm", "/axocoatl"},
			Env: []string{"GREETING", "HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE"}}},
	} {
		t.Run(tc.tier, func(t *testing.T) {
			cfg, _ := guestConfig(t, tc.extra)
			requiresTier(t, cfg, tc.tier)
			env := call(t, "--config", cfg, "--tools", tools, "--input", input, "sysinfo")
			var got sysinfo
			env.output(t, &got)
			want := tc.want
			want.Greeting, want.InputSHA256 = "hello from tool.json", sha256Hex([]byte(input))
			if tc.tier == "Firecracker" {
				want.Hostname = got.Hostname // the call's id: checked below
			}
			sort.Strings(got.Writable)
			sort.Strings(want.Writable)
			if !reflect.DeepEqual(got, want) || env.Tier != tc.tier || env.Degraded != tc.degraded {
				t.Errorf("sysinfo in %s (degraded %v):\n got %+v\nwant %+v", env.Tier, env.Degraded, got, want)
			}
			if tc.tier == "Firecracker" && len(got.Hostname) != 36 {
				t.Errorf("a VM's host name is the call's id, got %q", got.Hostname)
			}
			if env.Stdout != "sysinfo: wrote /axocoatl/output.json\n" || env.Stderr != "sysinfo: probing done\n" {
				t.Errorf("stdout %q, stderr %q", env.Stdout, env.Stderr)
			}
		})
	}
}

// TestPythonBaseExample: examples/python-base's yaml2json, whose base image (built by
// build-base.sh from the prepared guest root plus Debian's python3-yaml) gives it PyYAML, in a
// microVM and in a container.
func TestPythonBaseExample(t *testing.T) {
	testutil.RequiresBinary(t, "apt-get", "apt")
	testutil.RequiresBinary(t, "dpkg", "dpkg")
	cfg, dataDir := guestConfig(t, nil)
	tools := copyTools(t, "python-base/tools")
	build := exec.Command("sh", "python-base/build-base.sh", tools)
	build.Env = append(os.Environ(), "AXOISO_VM_DIR="+testguest.VMDir(dataDir))
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("build-base.sh failed (no Debian mirror?): %v\n%s", err, out)
	}
	for _, tier := range []string{"Firecracker", "Oci"} {
		t.Run(tier, func(t *testing.T) {
			requiresTier(t, cfg, tier)
			env := call(t, "--config", cfg, "--tier", tier, "--tools", tools, "--input", `{"yaml":"name: axocoatl\ntiers: [Oci, Firecracker]"}`, "yaml2json")
			var got struct {
				JSON    map[string]any
				PyYAML  string
				LibYAML bool
			}
			env.output(t, &got)
			if got.JSON["name"] != "axocoatl" || len(got.JSON["tiers"].([]any)) != 2 || got.PyYAML == "" || !got.LibYAML || env.Tier != tier {
				t.Errorf("yaml2json in %s: %s", env.Tier, env.Output)
			}
		})
	}
}

// TestImageExample: examples/image's OCI layout (a static program, labels for the description
// and the input schema) becomes a tool with `axoiso bundle`, and runs in a container and in a
// microVM with the same output; the program sees the image's user and working directory.
func TestImageExample(t *testing.T) {
	testutil.RequiresRoot(t, "containers")
	testutil.RequiresBinary(t, "umoci", "umoci")
	layout := filepath.Join(t.TempDir(), "layout")
	build := exec.Command("sh", "image/build-layout.sh", layout)
	build.Env = append(os.Environ(), "GO="+wasmbuild.GoCommand())
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build-layout.sh: %v\n%s", err, out)
	}
	tools := t.TempDir()
	_ = os.Chmod(tools, 0o755)
	cfg := config(t, nil)
	if code, _, errs := axoiso(t, "bundle", "digest", "--config", cfg, "--tools", tools, "--from", "oci:"+layout+":latest"); code != 0 {
		t.Fatalf("axoiso bundle: exit %d: %s", code, errs)
	}
	_, out, _ := axoiso(t, "tools", "--json", "--config", cfg, "--tools", tools)
	var listed []struct {
		Name, Description string
		InputSchema       json.RawMessage `json:"input_schema"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("tools --json %q: %v", out, err)
	}
	for _, l := range listed {
		var schema bytes.Buffer
		_ = json.Compact(&schema, l.InputSchema)
		if l.Name == "digest" && (!strings.Contains(l.Description, "a static program in an OCI image") || !strings.Contains(schema.String(), `"maxLength":65536`)) {
			t.Errorf("the image's labels did not become the tool's description and schema: %s %s", l.Description, l.InputSchema)
		}
	}
	if code, _, errs := axoiso(t, "run", "--config", cfg, "--tools", tools, "--input", `{"txt":"x"}`, "digest"); code != 2 || !strings.Contains(errs, "invalid input") {
		t.Errorf("input against the label's schema: exit %d: %s", code, errs)
	}
	text := "to be or not to be"
	want := map[string]any{"sha256": sha256Hex([]byte(text)), "bytes": float64(len(text)), "words": 6.0,
		"sandbox": map[string]any{"uid": 65532.0, "gid": 65532.0, "cwd": "/app", "hostname": "axocoatl",
			"writable": []any{"/tmp", "/dev/shm", "/axocoatl"}}}
	run := func(t *testing.T, cfg string, tier string) {
		env := call(t, "--config", cfg, "--tier", tier, "--timeout", "60s", "--tools", tools, "--input", `{"text":"`+text+`"}`, "digest")
		var got map[string]any
		env.output(t, &got)
		if !reflect.DeepEqual(got, want) || env.Tier != tier {
			t.Errorf("digest in %s: %s\nwant %v", env.Tier, env.Output, want)
		}
		if env.Stdout != "digest: done\n" || env.Stderr != "digest: 18 bytes\n" {
			t.Errorf("stdout %q, stderr %q", env.Stdout, env.Stderr)
		}
	}
	t.Run("Oci", func(t *testing.T) {
		requiresTier(t, cfg, "Oci")
		run(t, cfg, "Oci")
	})
	t.Run("Firecracker", func(t *testing.T) {
		cfg, _ := guestConfig(t, nil)
		requiresTier(t, cfg, "Firecracker")
		run(t, cfg, "Firecracker")
	})
}
