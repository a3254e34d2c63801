package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
)

// runAxoiso runs the CLI in-process and returns its exit code, stdout and stderr.
func runAxoiso(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func toolsRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "wasm-thing"), 0o755))
	must(os.WriteFile(filepath.Join(root, "wasm-thing/tool.json"), []byte(`{"runtime":"WasmCompiled","entrypoint":"m.wasm"}`), 0o644))
	must(os.WriteFile(filepath.Join(root, "wasm-thing/m.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644))
	return root
}

func TestRunContract(t *testing.T) {
	root := toolsRoot(t)
	noWasm := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(noWasm, []byte(`{"disable_tiers":["Wasmtime"]}`), 0o644)
	broken := t.TempDir()
	os.MkdirAll(filepath.Join(broken, "broken"), 0o755)
	os.WriteFile(filepath.Join(broken, "broken/tool.json"), []byte(`{"runtime":"NoSuchRuntime"}`), 0o644)
	inFile := filepath.Join(t.TempDir(), "in.json")
	os.WriteFile(inFile, []byte(`{"from":"file"}`), 0o644)

	tests := []struct {
		name       string
		stdin      string
		args       []string
		code       int
		stdout     string // exact, when not ""
		stderrHas  string
		stderrLine bool // stderr is exactly one line
	}{
		{"input flag", "", []string{"run", "--tools", root, "--input", `{"a":1}`, "echo"}, 0, "{\"a\":1}\n", "", false},
		{"stdin", `[true]`, []string{"run", "--tools", root, "echo"}, 0, "[true]\n", "", false},
		{"input file, flags after name", "", []string{"run", "echo", "--tools", root, "--input-file", inFile}, 0, "{\"from\":\"file\"}\n", "", false},
		{"invalid name", "{}", []string{"run", "--tools", root, "../etc/passwd"}, 2, "", "invalid tool name", true},
		{"malformed input", "{", []string{"run", "--tools", root, "echo"}, 2, "", "invalid input", true},
		{"both inputs", "", []string{"run", "--tools", root, "--input", "1", "--input-file", inFile, "echo"}, 2, "", "not both", true},
		{"bad tier", "{}", []string{"run", "--tools", root, "--tier", "Docker", "echo"}, 2, "", "unknown tier", true},
		{"not found", "{}", []string{"run", "--tools", root, "nope"}, 3, "", "tool not found", true},
		{"broken tool", "{}", []string{"run", "--tools", broken, "broken"}, 3, "", "invalid tool", true},
		{"tier unavailable", "{}", []string{"run", "--tools", root, "--config", noWasm, "wasm-thing"}, 4, "", "Wasmtime", true},
		{"forced tier unavailable", "{}", []string{"run", "--tools", root, "--config", noWasm, "--tier", "Wasmtime", "echo"}, 4, "", "tier unavailable", true},
		{"missing tools root", "{}", []string{"run", "--tools", filepath.Join(root, "nope"), "echo"}, 1, "", "tools root", true},
		{"unknown command", "", []string{"frobnicate"}, 2, "", "unknown command", true},
		{"no name", "", []string{"run", "--tools", root}, 2, "", "exactly one tool name", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runAxoiso(t, tt.stdin, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", code, tt.code, out, errs)
			}
			if tt.stdout != "" && out != tt.stdout {
				t.Errorf("stdout %q, want %q", out, tt.stdout)
			}
			if tt.code != 0 && out != "" {
				t.Errorf("a failed call printed on stdout: %q", out)
			}
			if !strings.Contains(errs, tt.stderrHas) {
				t.Errorf("stderr %q does not contain %q", errs, tt.stderrHas)
			}
			if tt.stderrLine && strings.Count(errs, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", errs)
			}
		})
	}
}

func TestRunEnvelope(t *testing.T) {
	code, out, errs := runAxoiso(t, `{"k":"v"}`, "run", "--json", "--tools", toolsRoot(t), "echo")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var env map[string]any
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"output", "tier", "degraded", "duration_ms", "stderr", "call_id"} {
		if _, ok := env[k]; !ok {
			t.Errorf("envelope lacks %q: %s", k, out)
		}
	}
	if env["tier"] != "None" || env["degraded"] != false || env["output"].(map[string]any)["k"] != "v" {
		t.Errorf("envelope = %s", out)
	}
}

func TestTiersAndToolsJSON(t *testing.T) {
	code, out, errs := runAxoiso(t, "", "tiers", "--json")
	if code != 0 {
		t.Fatalf("tiers: exit %d: %s", code, errs)
	}
	var tiers []struct {
		Tier      string
		Available bool
		Reason    string
		Fix       string
		Network   string
	}
	if err := json.Unmarshal([]byte(out), &tiers); err != nil || len(tiers) != 4 {
		t.Fatalf("tiers --json = %s (%v)", out, err)
	}
	for i, want := range []string{"None", "Wasmtime", "Oci", "Firecracker"} {
		if tiers[i].Tier != want {
			t.Errorf("tier %d = %s, want %s", i, tiers[i].Tier, want)
		}
		if !tiers[i].Available && (tiers[i].Reason == "" || tiers[i].Fix == "") {
			t.Errorf("unavailable tier %s lacks a reason or a fix: %+v", want, tiers[i])
		}
	}
	// The Oci and microVM tiers say whether tools with a network policy can run here.
	for _, tr := range tiers[2:] {
		if tr.Available && tr.Network == "" {
			t.Errorf("%s says nothing about network policies: %+v", tr.Tier, tr)
		}
	}
	if w := tiers[1]; w.Available && !strings.Contains(w.Network, "http_request") {
		t.Errorf("Wasmtime does not say how it enforces network policies: %+v", w)
	}
	root := toolsRoot(t)
	code, out, errs = runAxoiso(t, "", "tools", "--json", "--tools", root)
	if code != 0 {
		t.Fatalf("tools: exit %d: %s", code, errs)
	}
	var tools []struct{ Name, Runtime, Tier string }
	if err := json.Unmarshal([]byte(out), &tools); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tl := range tools {
		got[tl.Name] = tl.Runtime
	}
	if got["echo"] != "NativeTrusted" || got["wasm-thing"] != "WasmCompiled" {
		t.Errorf("tools = %s", out)
	}
}

func TestBenchJSON(t *testing.T) {
	code, out, errs := runAxoiso(t, "", "bench", "--json", "-n", "50", "-c", "2", "--tools", toolsRoot(t), "echo")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"n", "p50_ms", "p90_ms", "p99_ms", "calls_per_s", "tier"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("bench --json lacks %q: %s", k, out)
		}
	}
	if rep["n"].(float64) != 50 || rep["tier"] != "None" || rep["calls_per_s"].(float64) <= 0 {
		t.Errorf("bench = %s", out)
	}
	p50, p99 := rep["p50_ms"].(float64), rep["p99_ms"].(float64)
	if p50 > p99 {
		t.Errorf("p50 %v > p99 %v", p50, p99)
	}
}

func TestToolsRootFromEnvAndFlagWins(t *testing.T) {
	root := toolsRoot(t)
	t.Setenv("AXOISO_TOOLS", root)
	list := func(args ...string) string {
		code, out, errs := runAxoiso(t, "", append([]string{"tools", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		return out
	}
	if out := list(); !strings.Contains(out, `"wasm-thing"`) {
		t.Errorf("$AXOISO_TOOLS not used: %s", out)
	}
	if out := list("--tools", t.TempDir()); strings.Contains(out, `"wasm-thing"`) {
		t.Errorf("--tools did not win over $AXOISO_TOOLS: %s", out)
	}
	cfg := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(cfg, []byte(`{"tools_root":"`+t.TempDir()+`"}`), 0o644)
	if out := list("--config", cfg); !strings.Contains(out, `"wasm-thing"`) {
		t.Errorf("the config's tools_root won over $AXOISO_TOOLS: %s", out)
	}
	os.WriteFile(cfg, []byte(`{"tools_root":`), 0o644)
	if code, _, errs := runAxoiso(t, "", "tools", "--config", cfg); code == 0 || !strings.Contains(errs, "config") {
		t.Errorf("a broken config file: exit %d, %q", code, errs)
	}
}

// TestExitCodes checks every outcome's exit code against the documented contract (README, usage),
// written out here so that a wrong entry in isolation's outcome table fails.
func TestExitCodes(t *testing.T) {
	want := map[string]int{
		"ok": 0, "invalid_tool_name": 2, "invalid_input": 2, "tool_not_found": 3, "invalid_tool": 3,
		"downgrade_refused": 4, "tier_unavailable": 4, "tool_failed": 5, "output_missing": 5,
		"output_invalid": 5, "output_too_large": 5, "timeout": 6, "memory_limit": 7,
		"sandbox_failed": 8, "busy": 9, "worker_lost": 10, "canceled": 130, "internal": 1,
	}
	for _, o := range isolation.Outcomes() {
		w, ok := want[o.Kind]
		if !ok {
			t.Errorf("outcome %q has no documented exit code", o.Kind)
			continue
		}
		if o.Class != nil {
			err := fmt.Errorf("axoiso: %w", &isolation.Error{Kind: o.Class, Tool: "t"})
			if got := exitCode(err); got != w {
				t.Errorf("%s: exit %d, want %d", o.Kind, got, w)
			}
		}
		if o.ExitCode != w {
			t.Errorf("%s: table exit %d, want %d", o.Kind, o.ExitCode, w)
		}
		delete(want, o.Kind)
	}
	for k := range want {
		t.Errorf("outcome %q is not in the table", k)
	}
	for _, c := range []struct {
		err  error
		code int
	}{
		{usagef("bad flag"), 2},
		{fmt.Errorf("tool %q: %w", "x", context.Canceled), 130},
		{errors.New("the tools root is missing"), 1},
	} {
		if got := exitCode(c.err); got != c.code {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.code)
		}
	}
}

// TestToolsShowEffectivePolicy: `axoiso tools` shows each tool's effective network policy (tool.json
// ∩ the config's grants − the deny set) and what was asked and not granted, in JSON and as text.
func TestToolsShowEffectivePolicy(t *testing.T) {
	root := t.TempDir()
	for name, manifest := range map[string]string{
		"fetch":   `{"runtime":"NativeTrusted","network":{"egress":["api.example.com:443","other.test:80","10.0.0.0/8:80"]}}`,
		"offline": `{"runtime":"NativeTrusted"}`,
	} {
		if err := os.MkdirAll(filepath.Join(root, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name, "tool.json"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(cfg, []byte(`{"egress":{"all_tools":["10.0.0.0/8:80"],"tools":{"fetch":["**.example.com:443"]}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runAxoiso(t, "", "tools", "--json", "--tools", root, "--config", cfg)
	if code != 0 {
		t.Fatalf("tools --json: exit %d: %s", code, errs)
	}
	var rows []struct {
		Name             string
		Egress           []string
		EgressNotGranted []struct{ Pattern, Reason string } `json:"egress_not_granted"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range rows {
		switch r.Name {
		case "fetch":
			found++
			ng := map[string]string{}
			for _, n := range r.EgressNotGranted {
				ng[n.Pattern] = n.Reason
			}
			if fmt.Sprint(r.Egress) != "[api.example.com:443]" || len(ng) != 2 ||
				!strings.Contains(ng["other.test:80"], "not granted") || !strings.Contains(ng["10.0.0.0/8:80"], "deny set") {
				t.Errorf("fetch: egress %q, not granted %+v", r.Egress, r.EgressNotGranted)
			}
		case "offline":
			found++
			if r.Egress != nil || r.EgressNotGranted != nil {
				t.Errorf("offline: egress %q, not granted %+v", r.Egress, r.EgressNotGranted)
			}
		}
	}
	if found != 2 {
		t.Errorf("tools --json = %s", out)
	}
	code, out, errs = runAxoiso(t, "", "tools", "--tools", root, "--config", cfg)
	if code != 0 {
		t.Fatalf("tools: exit %d: %s", code, errs)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[0] == "fetch" && (f[3] != "api.example.com:443" || !strings.Contains(line, "(2 not granted)")) {
			t.Errorf("text row of fetch: %q", line)
		}
	}
	if !strings.Contains(out, "EGRESS") || !strings.Contains(out, "(2 not granted)") {
		t.Errorf("tools:\n%s", out)
	}
}
