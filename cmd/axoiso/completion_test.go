package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestMain lets the test binary stand in for axoiso when a completion script calls it back.
func TestMain(m *testing.M) {
	if os.Getenv("AXOISO_TEST_AS_CLI") == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// fakeAxoiso is an executable that runs this test binary as the CLI.
func fakeAxoiso(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "axoiso")
	writeFile(t, p, []byte("#!/bin/sh\nAXOISO_TEST_AS_CLI=1 exec '"+exe+"' \"$@\"\n"), 0o755)
	return p
}

func TestCompletion(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "wordcount/tool.json"), []byte(`{"runtime":"NativeTrusted"}`), 0o644)
	writeFile(t, filepath.Join(root, "word-freq/tool.json"), []byte(`{"runtime":"NativeTrusted"}`), 0o644)
	bin := fakeAxoiso(t)
	t.Setenv("AXOISO_TOOLS", "")
	t.Setenv("AXOISO_CONFIG", filepath.Join(t.TempDir(), "none.json"))
	os.WriteFile(os.Getenv("AXOISO_CONFIG"), []byte(`{}`), 0o600)

	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, errs := runAxoiso(t, "", "completion", sh)
		if code != 0 || out == "" {
			t.Fatalf("completion %s: exit %d, %s", sh, code, errs)
		}
		p := filepath.Join(t.TempDir(), "axoiso."+sh)
		writeFile(t, p, []byte(out), 0o644)
		scripts[sh] = p
		// Syntax, with each shell that is installed (bash always is).
		if _, err := exec.LookPath(sh); err != nil {
			t.Logf("%s not installed: its script's syntax is not checked", sh)
			continue
		}
		if b, err := exec.Command(sh, "-n", p).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, b)
		}
	}
	if code, _, errs := runAxoiso(t, "", "completion", "bsh"); code != exitInvalid || !strings.Contains(errs, `did you mean "bash"?`) {
		t.Errorf("completion bsh: exit %d, %q", code, errs)
	}

	// bash: what each partial command line completes to.
	complete := func(words ...string) string {
		t.Helper()
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = "'" + w + "'"
		}
		script := "source " + scripts["bash"] + "\nCOMP_WORDS=(" + bin + " " + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
			strconv.Itoa(len(words)) + "\n_axoiso\necho \"${COMPREPLY[*]}\"\n"
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"ru"}, "run"},
		{[]string{"co"}, "completion config"},
		{[]string{"run", "--ti"}, "--tier --timeout"},
		{[]string{"run", "--tier", "O"}, "Oci"},
		{[]string{"run", "--tools", root, "word"}, "word-freq wordcount"},
		{[]string{"bench", "--tools", root, "ec"}, "echo"}, // a built-in
		{[]string{"config", "ch"}, "check"},
		{[]string{"completion", "f"}, "fish"},
		{[]string{"help", "serv"}, "serve"},
	} {
		if got := complete(tc.words...); got != tc.want {
			t.Errorf("axoiso %s<TAB> = %q, want %q", strings.Join(tc.words, " "), got, tc.want)
		}
	}
	if _, err := exec.LookPath("fish"); err == nil {
		out, err := exec.Command("fish", "-c", "source "+scripts["fish"]+"; complete -C 'axoiso ru'").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "run") {
			t.Errorf("fish: complete -C 'axoiso ru' = %q, %v", out, err)
		}
	}
}
