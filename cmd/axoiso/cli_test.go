package main

import (
	"bytes"
	"context"
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
