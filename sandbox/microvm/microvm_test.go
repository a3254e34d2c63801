package microvm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/vmimage"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// testDataDir caches the prepared guest across test runs (Prepare is idempotent).
const testDataDir = "/var/cache/axocoatl-test/vm"

var (
	image     vmimage.Image
	skipWhy   string
	runRoot   string
	debugSink = os.Getenv("AXO_VM_DEBUG") != ""
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	skipWhy = prepare()
	code := m.Run()
	if skipWhy == "" {
		// After the suite no VMM, socket or run dir of this process may remain.
		if left := leftovers(); left != "" {
			fmt.Fprintln(os.Stderr, "LEAK after the suite:", left)
			code = 1
		}
		os.RemoveAll(runRoot)
	}
	return code
}

func prepare() string {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		return "needs Linux as root"
	}
	for _, bin := range []string{"qemu-system-x86_64", "apt-get", "dpkg-deb", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " not found (apt-get install qemu-system-x86)"
		}
	}
	tmp, err := os.MkdirTemp("", "axo-agent-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(tmp)
	agent := filepath.Join(tmp, "axoiso-guest")
	build := exec.Command("go", "build", "-trimpath", "-o", agent, "github.com/axocoatl/isolation/cmd/axoiso-guest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Sprintf("build agent: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	image, err = vmimage.Prepare(ctx, vmimage.Config{DataDir: testDataDir, Agent: agent})
	if err != nil {
		return "vm prepare failed (no apt mirror?): " + err.Error()
	}
	fmt.Fprintf(os.Stderr, "vm prepare: %.1fs (built in %.1fs when first run)\n", time.Since(start).Seconds(), image.PrepareSeconds)
	runRoot, err = os.MkdirTemp("", "axo-vmrun-")
	if err != nil {
		return err.Error()
	}
	return ""
}

// leftovers lists qemu processes started under runRoot and files left in it.
func leftovers() string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(runRoot)) {
			out = append(out, "process "+p)
		}
	}
	entries, _ := os.ReadDir(runRoot)
	for _, e := range entries {
		out = append(out, "file "+e.Name())
	}
	return strings.Join(out, ", ")
}

func newSandbox(t testing.TB, opts microvm.Options) *microvm.Sandbox {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	opts.Drivers = []microvm.Driver{qemu.New()}
	opts.DataDir = testDataDir
	opts.RunDir = runRoot
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if debugSink {
		opts.Debug = os.Stderr
	}
	s, err := microvm.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := os.Stat(s.RunDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run dir %s survived Close", s.RunDir())
		}
	})
	return s
}

// tool writes a tool folder with one entrypoint file.
func tool(t testing.TB, name, content string, mode os.FileMode) (dir, entry string) {
	dir = t.TempDir()
	entry = filepath.Join(dir, name)
	if err := os.WriteFile(entry, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return dir, entry
}

func call(id string, req isolation.RuntimeRequirement, dir, entry, input string, timeout time.Duration) sandbox.Call {
	return sandbox.Call{ID: id, Tool: "t", Runtime: req, Dir: dir, Entrypoint: entry, Input: []byte(input),
		Limits: sandbox.Limits{Timeout: timeout}.WithDefaults()}
}

const pyEcho = `import json, os, sys
with open("/axocoatl/input.json") as f:
    data = json.load(f)
print("to stderr", file=sys.stderr)
with open("/axocoatl/output.json", "w") as f:
    json.dump({"sum": sum(data["n"]), "uid": os.getuid()}, f)
`

const shEcho = `#!/bin/sh
read -r line < /axocoatl/input.json
printf '{"got":%s,"host":"%s"}' "$line" "$(hostname)" > /axocoatl/output.json
echo shell-stderr >&2
`

func TestRunTools(t *testing.T) {
	s := newSandbox(t, microvm.Options{})
	cases := []struct {
		name    string
		req     isolation.RuntimeRequirement
		file    string
		content string
		input   string
		check   func(t *testing.T, out map[string]any)
		stderr  string
	}{
		{"python", isolation.RequirePython, "main.py", pyEcho, `{"n":[1,2,3,4]}`, func(t *testing.T, out map[string]any) {
			if out["sum"] != 10.0 {
				t.Errorf("sum = %v, want 10", out["sum"])
			}
			if out["uid"] != 65534.0 {
				t.Errorf("tool ran as uid %v, want 65534 (nobody)", out["uid"])
			}
		}, "to stderr"},
		{"shell", isolation.RequireShell, "main.sh", shEcho, `{"k":"v"}`, func(t *testing.T, out map[string]any) {
			got, _ := out["got"].(map[string]any)
			if got["k"] != "v" {
				t.Errorf("got = %v, want the input back", out["got"])
			}
			if out["host"] != "call-shell" {
				t.Errorf("hostname = %v, want the call id", out["host"])
			}
		}, "shell-stderr"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, entry := tool(t, tc.file, tc.content, 0o644)
			o, err := s.Run(context.Background(), call("call-"+tc.name, tc.req, dir, entry, tc.input, 20*time.Second))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if o.ExitCode != 0 || o.Backend != "qemu-microvm-tcg" && o.Backend != "qemu-microvm-kvm" {
				t.Fatalf("outcome %+v", o)
			}
			var out map[string]any
			if err := json.Unmarshal(o.Output, &out); err != nil {
				t.Fatalf("output %q: %v", o.Output, err)
			}
			tc.check(t, out)
			if !strings.Contains(o.Stderr, tc.stderr) {
				t.Errorf("stderr %q lacks %q", o.Stderr, tc.stderr)
			}
		})
	}
}
