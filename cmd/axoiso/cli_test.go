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
