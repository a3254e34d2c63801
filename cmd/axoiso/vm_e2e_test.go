package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// vmTestDataDir is shared with the microVM tier's tests: `vm prepare` is idempotent, so a run
// prepares the guest once.
const vmTestDataDir = "/var/cache/axocoatl-test"

// TestVMPrepareThenRunPython is the microVM user story: `axoiso vm prepare`, then `axoiso run`
// of a Python tool boots a real VM (QEMU microvm, software emulation here).
func TestVMPrepareThenRunPython(t *testing.T) {
	requiresRoot(t)
	for _, bin := range []string{"qemu-system-x86_64", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found (apt-get install qemu-system-x86)", bin)
		}
	}
	agent := filepath.Join(t.TempDir(), "axoiso-guest")
	build := exec.Command("go", "build", "-o", agent, "github.com/axocoatl/isolation/cmd/axoiso-guest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	runDir := t.TempDir()
	cfg := configFile(t, map[string]any{"cache_dir": t.TempDir(), "data_dir": vmTestDataDir,
		"vm": map[string]any{"run_dir": runDir}})
	code, out, errs := runAxoiso(t, "", "vm", "prepare", "--config", cfg, "--agent", agent, "--json")
	if code != 0 {
		t.Skipf("vm prepare failed (no Debian mirror?): %s", errs)
	}
	var img struct{ Kernel, Initrd, RootFS string }
	if err := json.Unmarshal([]byte(out), &img); err != nil || !strings.HasPrefix(img.Kernel, vmTestDataDir+"/vm/") {
		t.Fatalf("vm prepare --json = %s (%v)", out, err)
	}
	if code, _, errs := runAxoiso(t, "", "vm", "prepare", "--config", cfg, "--agent", filepath.Join(t.TempDir(), "missing")); code == 0 || !strings.Contains(errs, "go build") {
		t.Errorf("prepare with a missing agent: exit %d, %q (want the fix)", code, errs)
	}

	root := t.TempDir()
	writeFile(t, filepath.Join(root, "py-sum/tool.json"), []byte(`{"runtime":"Python","entrypoint":"main.py","timeout_ms":60000}`), 0o644)
	writeFile(t, filepath.Join(root, "py-sum/main.py"), []byte(`import json, os
d = json.load(open("/axocoatl/input.json"))
json.dump({"sum": sum(d["numbers"]), "uid": os.getuid()}, open("/axocoatl/output.json", "w"))
`), 0o644)
	code, out, errs = runAxoiso(t, "", "run", "--json", "--strict", "--tools", root, "--config", cfg, "--input", `{"numbers":[1,2,3.5]}`, "py-sum")
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, errs)
	}
	var env struct {
		Output   map[string]float64
		Tier     string
		Backend  string
		Degraded bool
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatal(err)
	}
	if env.Output["sum"] != 6.5 || env.Output["uid"] == 0 || env.Tier != "Firecracker" || env.Degraded || !strings.HasPrefix(env.Backend, "qemu") {
		t.Fatalf("envelope = %s", out)
	}
	// Without a VMM the same Python tool falls back to a container on the guest root `vm prepare`
	// built: a reported downgrade that really runs.
	noVM := configFile(t, map[string]any{"cache_dir": t.TempDir(), "data_dir": vmTestDataDir, "disable_tiers": []string{"Firecracker"},
		"oci": map[string]any{"state_root": t.TempDir(), "pool_size": -1}})
	code, out, errs = runAxoiso(t, "", "run", "--json", "--tools", root, "--config", noVM, "--input", `{"numbers":[2,2]}`, "py-sum")
	if code == 0 {
		env.Output, env.Tier, env.Degraded = nil, "", false
		if err := json.Unmarshal([]byte(out), &env); err != nil || env.Output["sum"] != 4 || env.Output["uid"] == 0 || env.Tier != "Oci" || !env.Degraded {
			t.Errorf("fallback envelope = %s (%v)", out, err)
		}
	} else if !strings.Contains(errs, "Oci unavailable") {
		t.Errorf("fallback to Oci: exit %d: %s", code, errs)
	}

	// Nothing of the call outlives it: no VMM process, no socket or run dir.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), runDir) {
			t.Errorf("VMM left running: %s", p)
		}
	}
	if ents, _ := os.ReadDir(runDir); len(ents) > 0 {
		t.Errorf("run dir not empty: %v", ents)
	}
}
