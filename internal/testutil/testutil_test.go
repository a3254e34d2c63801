package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBusyboxTree: the tree's applets run (a broken symlink or a non-executable busybox would
// make every container test that uses it fail for the wrong reason).
func TestBusyboxTree(t *testing.T) {
	dir := t.TempDir()
	BusyboxTree(t, dir, "sh", "echo")
	out, err := exec.Command(filepath.Join(dir, "bin", "sh"), "-c", "echo from-the-tree").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "from-the-tree" {
		t.Fatalf("bin/sh in the tree: %v %q", err, out)
	}
	for _, d := range []string{"tmp", "proc", "sys", "dev", "axocoatl"} {
		if fi, err := os.Stat(filepath.Join(dir, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
}
