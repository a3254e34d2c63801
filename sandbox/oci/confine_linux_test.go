package oci

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// A bundle's paths are confined by the kernel, not by their text: a rootfs/ that is a symlink to a
// host directory, a root.path through a symlinked parent, a config.json that is a symlink or a
// FIFO are refused as an invalid tool by every backend (crun ran the first two with the host
// directory as root, and the tool read a root-only file there).
func TestBundleConfinement(t *testing.T) {
	needContainers(t)
	host := t.TempDir() // stands for any host directory
	_ = os.Chmod(host, 0o755)
	if err := makeBundle(host, "h", env.probeBin); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(host, "h", "rootfs", "secret")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	hostCfg := filepath.Join(host, "h", "config.json")
	raw, err := os.ReadFile(hostCfg)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	_ = os.Chmod(root, 0o755)
	withRoot := func(path string) []byte {
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		m["root"] = map[string]any{"path": path}
		b, _ := json.Marshal(m)
		return b
	}
	bundles := map[string]func(dir string) error{
		"rootfs-symlink": func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
				return err
			}
			return os.Symlink(filepath.Join(host, "h", "rootfs"), filepath.Join(dir, "rootfs"))
		},
		"parent-symlink": func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "config.json"), withRoot("sub/rootfs"), 0o644); err != nil {
				return err
			}
			return os.Symlink(filepath.Join(host, "h"), filepath.Join(dir, "sub"))
		},
		"absolute-parent-symlink": func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "config.json"), withRoot(filepath.Join(dir, "sub", "rootfs")), 0o644); err != nil {
				return err
			}
			return os.Symlink(filepath.Join(host, "h"), filepath.Join(dir, "sub"))
		},
		"config-symlink": func(dir string) error {
			if err := os.Symlink(hostCfg, filepath.Join(dir, "config.json")); err != nil {
				return err
			}
			return os.Symlink(filepath.Join(host, "h", "rootfs"), filepath.Join(dir, "rootfs"))
		},
		"config-fifo": func(dir string) error {
			return syscall.Mkfifo(filepath.Join(dir, "config.json"), 0o644)
		},
	}
	for name, build := range bundles {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := build(dir); err != nil {
			t.Fatal(err)
		}
	}
	if err := makeBundle(root, "good", env.probeBin); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{BackendLibcontainer, BackendCrun, BackendRunc} {
		t.Run(kind, func(t *testing.T) {
			if kind != BackendLibcontainer {
				if _, err := exec.LookPath(kind); err != nil {
					t.Skipf("%s is not installed (apt-get install %s)", kind, kind)
				}
			}
			s := newSandbox(t, func(c *Config) { c.Backend = kind; c.BundleRoot = root })
			call := func(tool string) (sandbox.Outcome, error) {
				c := sandbox.Call{ID: uuid.NewString(), Tool: tool, Runtime: isolation.RequireContainerImage,
					Dir: filepath.Join(root, tool), Input: []byte(`{"op":"read","path":"/secret"}`),
					Limits: sandbox.Limits{Timeout: 20 * time.Second}.WithDefaults()}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				type res struct {
					out sandbox.Outcome
					err error
				}
				ch := make(chan res, 1)
				go func() { o, err := s.Run(ctx, c); ch <- res{o, err} }()
				select {
				case r := <-ch:
					return r.out, r.err
				case <-time.After(60 * time.Second):
					t.Fatalf("%s: the call hangs", tool)
				}
				return sandbox.Outcome{}, nil
			}
			for name := range bundles {
				t.Run(name, func(t *testing.T) {
					out, err := call(name)
					if err == nil {
						t.Fatalf("ran with output %s (stderr %q): the host directory was the container's root", out.Output, out.Stderr)
					}
					if !errors.Is(err, isolation.ErrInvalidTool) {
						t.Fatalf("err %v: want ErrInvalidTool", err)
					}
				})
			}
			// The confined path reaches the real rootfs: a plain bundle still runs.
			out, err := call("good")
			if err != nil {
				t.Fatal(err)
			}
			if m := decode(t, out); m["error"] == "" {
				t.Fatal("the good bundle has a /secret")
			}
		})
	}
}
