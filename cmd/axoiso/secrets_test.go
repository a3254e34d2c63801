package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/server"
)

// The planted secrets: long random-looking strings no other output would contain.
const (
	secretFromFile = "s3cr3t-from-file-7f1c2b9e4d"
	secretFromEnv  = "s3cr3t-from-env-a4e8d02c61"
	plainValue     = "plain-value-from-tool-json"
)

func sha(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// secretsCase is one tier's pair of tools: granted holds the secrets, other is the same tool
// without a grant.
type secretsCase struct {
	cfg           map[string]any // config besides tools_root and secrets
	input, failIn string         // a call that succeeds, one that fails after printing
}

// TestSecretsReachOnlyGrantedTools plants two secrets (from a file and from the daemon's
// environment) granted to one tool, and checks in each tier that runs here: the granted tool sees
// them (by their hashes), the same tool without a grant does not, and no output channel — the
// CLI's stdout and stderr with debug logs, `axoiso tools --json`, HTTP responses (envelope,
// error body, /v1/tools, /metrics), the server's log, MCP results — ever carries a value, also
// when the tool prints its secrets and fails.
func TestSecretsReachOnlyGrantedTools(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "api_key")
	writeFile(t, secretFile, []byte(secretFromFile+"\n"), 0o600)
	t.Setenv("AXO_TEST_TOKEN", secretFromEnv)

	t.Run("Wasmtime", func(t *testing.T) {
		mod := wasmGuest(t)
		root := t.TempDir()
		wasm, err := os.ReadFile(mod)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"granted", "other"} {
			writeFile(t, filepath.Join(root, n, "guest.wasm"), wasm, 0o644)
			writeFile(t, filepath.Join(root, n, "tool.json"), []byte(`{"runtime":"WasmCompiled","entrypoint":"guest.wasm","timeout_ms":60000,"env":{"PLAIN":"`+plainValue+`"}}`), 0o644)
		}
		in := `{"mode":"secrets","names":["API_KEY","TOKEN","PLAIN"]}`
		checkSecrets(t, root, secretFile, secretsCase{
			cfg:    map[string]any{"cache_dir": t.TempDir(), "disable_tiers": []string{"Oci", "Firecracker"}},
			input:  in,
			failIn: `{"mode":"secrets","names":["API_KEY","TOKEN","PLAIN"],"code":3}`,
		})
	})

	// The shell tool for Oci and the Python tool for the microVM do the same as the Wasm guest.
	shellTool := `for n in API_KEY TOKEN PLAIN; do eval v=\$$n; echo "$n=$v"; echo "$n=$v" >&2; done
h() { if [ -n "$1" ]; then printf '"%s"' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; else printf null; fi; }
printf '{"sha256":{"API_KEY":%s,"TOKEN":%s,"PLAIN":%s}}' "$(h "$API_KEY")" "$(h "$TOKEN")" "$(h "$PLAIN")" > /axocoatl/output.json
grep -q fail /axocoatl/input.json && exit 3
exit 0
`
	t.Run("Oci", func(t *testing.T) {
		requiresOci(t)
		requiresBusybox(t)
		rt := t.TempDir()
		os.MkdirAll(filepath.Join(rt, "bin"), 0o755)
		if out, err := exec.Command("cp", busybox, filepath.Join(rt, "bin/busybox")).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		for _, l := range []string{"sh", "sha256sum", "cut", "grep", "printf", "cat"} {
			os.Symlink("busybox", filepath.Join(rt, "bin", l))
		}
		os.MkdirAll(filepath.Join(rt, "axocoatl"), 0o755)
		os.MkdirAll(filepath.Join(rt, "tmp"), 0o755)
		root := t.TempDir()
		for _, n := range []string{"granted", "other"} {
			writeFile(t, filepath.Join(root, n, "tool.json"), []byte(`{"runtime":"Shell","entrypoint":"run.sh","env":{"PLAIN":"`+plainValue+`"}}`), 0o644)
			writeFile(t, filepath.Join(root, n, "run.sh"), []byte(shellTool), 0o644)
		}
		checkSecrets(t, root, secretFile, secretsCase{
			cfg: map[string]any{"cache_dir": t.TempDir(), "disable_tiers": []string{"Firecracker"},
				"oci": map[string]any{"state_root": t.TempDir(), "runtime_root": rt, "pool_size": -1}},
			input: `{}`, failIn: `{"fail":1}`,
		})
	})

	t.Run("Firecracker", func(t *testing.T) {
		cfg := preparedVM(t)
		root := t.TempDir()
		py := `import hashlib, json, os, sys
names = ["API_KEY", "TOKEN", "PLAIN"]
for n in names:
    print(n + "=" + os.environ.get(n, ""))
    print(n + "=" + os.environ.get(n, ""), file=sys.stderr)
sums = {n: hashlib.sha256(os.environ[n].encode()).hexdigest() if n in os.environ else None for n in names}
json.dump({"sha256": sums}, open("/axocoatl/output.json", "w"))
sys.exit(3 if "fail" in open("/axocoatl/input.json").read() else 0)
`
		for _, n := range []string{"granted", "other"} {
			writeFile(t, filepath.Join(root, n, "tool.json"), []byte(`{"runtime":"Python","entrypoint":"main.py","timeout_ms":60000,"env":{"PLAIN":"`+plainValue+`"}}`), 0o644)
			writeFile(t, filepath.Join(root, n, "main.py"), []byte(py), 0o644)
		}
		cfg["disable_tiers"] = []string{"Oci"}
		checkSecrets(t, root, secretFile, secretsCase{cfg: cfg, input: `{}`, failIn: `{"fail":1}`})
	})
}

// preparedVM returns config for the microVM tier with the test guest image (built once, shared
// with TestVMPrepareThenRunPython), or skips.
func preparedVM(t *testing.T) map[string]any {
	t.Helper()
	requiresRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
	}
	agent := filepath.Join(t.TempDir(), "axoiso-guest")
	build := exec.Command("go", "build", "-o", agent, "github.com/axocoatl/isolation/cmd/axoiso-guest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	cfg := map[string]any{"cache_dir": t.TempDir(), "data_dir": vmTestDataDir, "vm": map[string]any{"run_dir": t.TempDir()}}
	if code, _, errs := runAxoiso(t, "", "vm", "prepare", "--config", configFile(t, cfg), "--agent", agent); code != 0 {
		t.Skipf("vm prepare failed (no Debian mirror?): %s", errs)
	}
	return cfg
}

func checkSecrets(t *testing.T, root, secretFile string, c secretsCase) {
	t.Helper()
	c.cfg["secrets"] = map[string]any{"granted": map[string]any{
		"API_KEY": map[string]string{"file": secretFile},
		"TOKEN":   map[string]string{"env": "AXO_TEST_TOKEN"},
	}}
	cfg := configFile(t, c.cfg)
	var seen []string // every output, to grep for the secrets at the end
	clean := func(where, s string) {
		t.Helper()
		seen = append(seen, s)
		for _, v := range []string{secretFromFile, secretFromEnv} {
			if strings.Contains(s, v) {
				t.Errorf("%s carries a secret: %q", where, s)
			}
		}
	}
	wantSums := func(where string, output json.RawMessage, granted bool) {
		t.Helper()
		var o struct{ SHA256 map[string]*string }
		if err := json.Unmarshal(output, &o); err != nil {
			t.Fatalf("%s: output %s: %v", where, output, err)
		}
		get := func(k string) string {
			if p := o.SHA256[k]; p != nil {
				return *p
			}
			return ""
		}
		if get("PLAIN") != sha(plainValue) {
			t.Errorf("%s: tool.json env PLAIN did not arrive: %s", where, output)
		}
		if granted && (get("API_KEY") != sha(secretFromFile) || get("TOKEN") != sha(secretFromEnv)) {
			t.Errorf("%s: the granted tool did not get its secrets: %s", where, output)
		}
		if !granted && (get("API_KEY") != "" || get("TOKEN") != "") {
			t.Errorf("%s: a tool without a grant got a secret: %s", where, output)
		}
	}

	// The CLI, with debug logs on stderr.
	for _, tool := range []string{"granted", "other"} {
		code, out, errs := runAxoiso(t, "", "run", "--json", "--log-level", "debug", "--tools", root, "--config", cfg, "--input", c.input, tool)
		clean("axoiso run stdout", out)
		clean("axoiso run stderr", errs)
		if code != 0 {
			t.Fatalf("run %s: exit %d: %s", tool, code, errs)
		}
		var env struct {
			Output         json.RawMessage
			Stdout, Stderr string
		}
		if err := json.Unmarshal([]byte(out), &env); err != nil {
			t.Fatal(err)
		}
		wantSums("run "+tool, env.Output, tool == "granted")
		if tool == "granted" && (!strings.Contains(env.Stdout, "API_KEY=[redacted]") || !strings.Contains(env.Stderr, "TOKEN=[redacted]") || !strings.Contains(env.Stdout, "PLAIN="+plainValue)) {
			t.Errorf("stdout %q / stderr %q: want the secrets redacted and the plain value shown", env.Stdout, env.Stderr)
		}
	}
	code, out, errs := runAxoiso(t, "", "run", "--log-level", "debug", "--tools", root, "--config", cfg, "--input", c.failIn, "granted")
	clean("failed run stdout", out)
	clean("failed run stderr", errs)
	if code != 5 || !strings.Contains(errs, "[redacted]") {
		t.Errorf("failing call: exit %d, stderr %q", code, errs)
	}
	_, out, errs = runAxoiso(t, "", "tools", "--json", "--tools", root, "--config", cfg)
	clean("axoiso tools", out+errs)
	_, out, errs = runAxoiso(t, "", "config", "check", "--config", cfg)
	clean("axoiso config check", out+errs)

	// HTTP and MCP, with the server's log captured.
	var logs bytes.Buffer
	acfg, err := axoiso.LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	acfg.ToolsRoot = root
	acfg.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e, err := axoiso.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Executor: e, Logger: acfg.Logger, MaxTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer func() {
		ts.Close()
		srv.Close()
		clean("server log", logs.String())
	}()
	get := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var hdr strings.Builder
		resp.Header.Write(&hdr)
		clean(method+" "+path, hdr.String()+string(b))
		return resp.StatusCode, string(b)
	}
	status, body := get("POST", "/v1/tools/granted/execute?envelope=1", c.input)
	var env struct{ Output json.RawMessage }
	if json.Unmarshal([]byte(body), &env); status != 200 {
		t.Fatalf("HTTP execute: %d %s", status, body)
	}
	wantSums("HTTP", env.Output, true)
	if status, body = get("POST", "/v1/tools/granted/execute", c.failIn); status != 502 || !strings.Contains(body, "[redacted]") {
		t.Errorf("HTTP failing call: %d %s", status, body)
	}
	for _, p := range []string{"/v1/tools", "/v1/tools/granted", "/metrics", "/v1/tiers", "/healthz"} {
		get("GET", p, "")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(tools)
	clean("MCP tools/list", string(b))
	for _, in := range []string{c.input, c.failIn} {
		var args map[string]any
		json.Unmarshal([]byte(in), &args)
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "granted", Arguments: args})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(res)
		clean("MCP tools/call", string(b))
		if !strings.Contains(string(b), "[redacted]") {
			t.Errorf("MCP result shows no redacted stdout/stderr: %s", b)
		}
	}
	if len(seen) < 10 {
		t.Fatalf("only %d channels checked", len(seen))
	}
}
