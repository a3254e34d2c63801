package microvm_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// A tool folder is sent into the VM only as the tool's uid (65534) could read it on the host:
// anything it could not read, and anything but regular files and directories, is refused before a
// VM starts, with ErrInvalidTool naming the entry.
func TestToolFolderRefusals(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("host-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, entry string
		setup       func(t *testing.T, dir string)
	}{
		{"hard link to a private file", "secret", func(t *testing.T, dir string) {
			if err := os.Link(outside, filepath.Join(dir, "secret")); err != nil {
				t.Skip("hard link:", err)
			}
		}},
		{"private file", "conf/key", func(t *testing.T, dir string) {
			mkdir(t, filepath.Join(dir, "conf"), 0o755)
			write(t, filepath.Join(dir, "conf/key"), 0o640)
		}},
		{"symbolic link", "link", func(t *testing.T, dir string) {
			if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
		}},
		{"fifo", "pipe", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"private directory", "lib", func(t *testing.T, dir string) {
			mkdir(t, filepath.Join(dir, "lib"), 0o700)
			write(t, filepath.Join(dir, "lib/x.py"), 0o644)
		}},
		{"private tool folder", ".", func(t *testing.T, dir string) {
			if err := os.Chmod(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	s, err := microvm.New(microvm.Config{RunDir: t.TempDir(), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tool")
			mkdir(t, dir, 0o755)
			write(t, filepath.Join(dir, "main.sh"), 0o644)
			tc.setup(t, dir)
			_, err := s.Run(context.Background(), call("refuse", isolation.RequireShell, dir, filepath.Join(dir, "main.sh"), `{}`, 5*time.Second))
			if !errors.Is(err, isolation.ErrInvalidTool) {
				t.Fatalf("err = %v, want ErrInvalidTool", err)
			}
			if !strings.Contains(err.Error(), tc.entry) {
				t.Errorf("err %q does not name %q", err, tc.entry)
			}
		})
	}
}

func mkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte("echo '{}' > /axocoatl/output.json\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// In the VM the tool finds its files with the access it has on the host (read-only): 0644 → 0444,
// 0755 → 0555, and a file only its owner may run (0744) is not executable for it.
func TestToolFolderModesInVM(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	dir, entry := tool(t, "main.py", `import json, os
json.dump({f: "%o" % (os.stat(p).st_mode & 0o777) for f, p in (("main", "main.py"), ("run", "lib/run"), ("own", "own"))},
          open("/axocoatl/output.json", "w"))
`, 0o644)
	mkdir(t, filepath.Join(dir, "lib"), 0o755)
	write(t, filepath.Join(dir, "lib/run"), 0o755)
	write(t, filepath.Join(dir, "own"), 0o744)
	o, err := s.Run(context.Background(), call("modes", isolation.RequirePython, dir, entry, `{}`, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(o.Output, &got); err != nil {
		t.Fatalf("output %q: %v (stderr %s)", o.Output, err, o.Stderr)
	}
	if want := map[string]string{"main": "444", "run": "555", "own": "444"}; !equalMaps(got, want) {
		t.Errorf("modes in the VM %v, want %v", got, want)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
