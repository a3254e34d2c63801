package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIHelpers(t *testing.T) {
	tests := []struct {
		args      []string
		code      int
		stdout    string // substring expected on stdout
		stderr    string // substring expected on stderr
		notStdout string
	}{
		{args: []string{"--version"}, code: 0, stdout: "axoiso "},
		{args: []string{"version"}, code: 0, stdout: "go1."},
		{args: []string{"rn"}, code: exitInvalid, stderr: `did you mean "run"?`},
		{args: []string{"servee"}, code: exitInvalid, stderr: `did you mean "serve"?`},
		{args: []string{"zzzzzzzz"}, code: exitInvalid, stderr: "unknown command"},
		{args: []string{"help", "run"}, code: 0, stderr: "Usage of axoiso run", notStdout: "Commands:"},
		// serve logs at info: its help must not say warn.
		{args: []string{"serve", "--help"}, code: 0, stderr: `log level: debug, info, warn, error (default "info")`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, strings.NewReader(""), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, errb.String())
			}
			all := out.String() + errb.String()
			if tc.stdout != "" && !strings.Contains(out.String(), tc.stdout) {
				t.Errorf("stdout %q lacks %q", out.String(), tc.stdout)
			}
			if tc.stderr != "" && !strings.Contains(all, tc.stderr) {
				t.Errorf("output %q lacks %q", all, tc.stderr)
			}
			if tc.notStdout != "" && strings.Contains(out.String(), tc.notStdout) {
				t.Errorf("stdout %q has %q", out.String(), tc.notStdout)
			}
			if tc.args[0] == "zzzzzzzz" && strings.Contains(all, "did you mean") {
				t.Errorf("a far-off command got a suggestion: %q", all)
			}
		})
	}
}

// An unknown tool: the CLI names the tools root and the nearest tool; the library's message (what
// HTTP and MCP clients see) names no host path.
func TestUnknownToolSuggests(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "wordcount"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "wordcount", "tool.json"), []byte(`{"runtime":"NativeTrusted"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"run", "--tools", root, "--input", "{}", "wordcont"}, strings.NewReader(""), &out, &errb)
	if code != 3 {
		t.Fatalf("exit %d, want 3; stderr %q", code, errb.String())
	}
	for _, want := range []string{`no tool "wordcont" in the tools root`, "(tools root " + root + ")", `did you mean "wordcount"?`} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr %q lacks %q", errb.String(), want)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	good := filepath.Join(dir, "good.json")
	os.WriteFile(bad, []byte(`{"oci":{"pool_sise":3},"disable_tiers":["Firecraker"]}`), 0o600)
	os.WriteFile(good, []byte(`{"oci":{"pool_size":3}}`), 0o600)
	t.Setenv("AXOISO_TOOLS", "")
	for _, tc := range []struct {
		name      string
		args      []string
		code      int
		stdout    []string
		stderr    []string
		notStderr string
	}{
		{"bad", []string{"config", "check", "--config", bad}, exitInvalid, nil,
			[]string{`unknown key "oci.pool_sise"; did you mean "oci.pool_size"?`, `disable_tiers[0]: "Firecraker"`, `did you mean "Firecracker"?`}, "OciConfig"},
		{"good", []string{"config", "check", "--config", good, "--tools", dir}, 0,
			[]string{"oci.pool_size = 3", "# file", `tools_root = "` + dir + `"`, "# flag --tools", "oci.pids = 128", "# default"}, nil, ""},
		{"json", []string{"config", "check", "--config", good, "--json"}, 0, []string{`{"key":"oci.pool_size","value":3,"source":"file"}`}, nil, ""},
		// Every command refuses a wrong config, as a usage error.
		{"run refuses", []string{"run", "--config", bad, "--input", "{}", "x"}, exitInvalid, nil, []string{`did you mean "oci.pool_size"?`}, ""},
		{"no subcommand", []string{"config"}, exitInvalid, nil, []string{"config check"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, strings.NewReader(""), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tc.code, errb.String())
			}
			for _, w := range tc.stdout {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errb.String())
				}
			}
			if tc.notStderr != "" && strings.Contains(errb.String(), tc.notStderr) {
				t.Errorf("stderr names %q:\n%s", tc.notStderr, errb.String())
			}
		})
	}
}
