package oci

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// hostPythonRuntimeRoot builds a runtime root with the host's Python 3 and /bin/sh: the
// interpreter, its standard library and the shared libraries both need, copied. "" when the host
// has no /usr/bin/python3.
func hostPythonRuntimeRoot(t testing.TB) string {
	t.Helper()
	pyBin, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil {
		return ""
	}
	shBin, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		return ""
	}
	stdlib := filepath.Join("/usr/lib", filepath.Base(pyBin)) // /usr/lib/python3.11
	if _, err := os.Stat(filepath.Join(stdlib, "json")); err != nil {
		return ""
	}
	rt := filepath.Join(t.TempDir(), "rt")
	for _, d := range []string{"usr/bin", "usr/lib", "usr/lib64", "proc", "dev", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(rt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(rt, l)); err != nil {
			t.Fatal(err)
		}
	}
	// put never writes into an existing file (libc.so.6 is named by both ldd outputs).
	put := func(src, dst string) {
		dst = filepath.Join(rt, dst)
		if _, err := os.Lstat(dst); err == nil {
			return
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		// Copies, not hard links: the host's files must not be reachable for writing from
		// the root under test.
		if err := copyNew(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	put(pyBin, "usr/bin/python3")
	put(shBin, "usr/bin/sh")
	for _, bin := range []string{pyBin, shBin} {
		out, err := exec.Command("ldd", bin).Output()
		if err != nil {
			t.Skipf("ldd %s: %v", bin, err)
		}
		for _, f := range strings.Fields(string(out)) {
			if !strings.HasPrefix(f, "/") {
				continue
			}
			real, err := filepath.EvalSymlinks(f)
			if err != nil {
				continue
			}
			put(real, strings.TrimPrefix(f, "/"))
		}
	}
	err = filepath.WalkDir(stdlib, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.Contains(p, "/test/") || strings.Contains(p, "/idlelib/") ||
			strings.Contains(p, "/tkinter/") || strings.Contains(p, "/ensurepip/") || strings.Contains(p, "/lib2to3/") {
			return nil
		}
		put(p, strings.TrimPrefix(p, "/"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// copyNew copies src to dst, a file it creates (never an existing one).
func copyNew(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

const pyTool = `import json, multiprocessing, os, socket, subprocess, threading
r = {"input": json.load(open("/axocoatl/input.json"))}
r["sh"] = subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, text=True).stdout.strip()
t = threading.Thread(target=lambda: r.__setitem__("thread", True)); t.start(); t.join()
lock = multiprocessing.Lock(); lock.acquire(); lock.release(); r["lock"] = True
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
socket.create_connection(s.getsockname()).close(); s.close(); r["tcp"] = True
r["urandom"] = len(os.urandom(8))
try:
    socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK
    r["vsock"] = 0
except OSError as e:
    r["vsock"] = e.errno
json.dump(r, open("/axocoatl/output.json", "w"))
`

// The seccomp profile is a default-deny allowlist with a socket family filter, the same in every
// backend (it is part of the OCI spec): socket(AF_VSOCK) (which ignores network namespaces and
// reaches the hypervisor), AF_ALG, netlink other than NETLINK_ROUTE... fail with EPERM, as do
// ptrace and keyctl; a static Go tool, busybox sh and Python 3 still run.
func TestSeccompAllowlist(t *testing.T) {
	needContainers(t)
	if !seccomp.Enabled {
		t.Skip("built without -tags seccomp")
	}
	if err := makeBundleArgs(env.toolsDir, "shjson", env.probeBin,
		[]string{"/bin/sh", "-c", `x=$(cat /axocoatl/input.json); echo "$x" | cat > /axocoatl/output.json`}); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	rt := hostPythonRuntimeRoot(t)
	py := filepath.Join(env.toolsDir, "pytool")
	if err := os.MkdirAll(py, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(py, "run.py"), []byte(pyTool), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{BackendLibcontainer, BackendCrun, BackendRunc} {
		t.Run(kind, func(t *testing.T) {
			if kind != BackendLibcontainer {
				if _, err := exec.LookPath(kind); err != nil {
					t.Skipf("%s is not installed (apt-get install %s)", kind, kind)
				}
			}
			s := newSandbox(t, func(c *Config) { c.Backend = kind; c.RuntimeRoot = rt })
			t.Run("sockets", func(t *testing.T) {
				out, err := run(t, s, `{"op":"sockets"}`, 30*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				var got map[string]string
				if err := json.Unmarshal(out.Output, &got); err != nil {
					t.Fatalf("output %q: %v", out.Output, err)
				}
				for _, fam := range []string{"unix", "inet", "inet6", "netlink_route"} {
					if got[fam] == "operation not permitted" {
						t.Errorf("socket %s refused by the profile", fam)
					}
				}
				for _, fam := range []string{"unix", "inet", "netlink_route"} {
					if got[fam] != "" {
						t.Errorf("socket %s: %s", fam, got[fam])
					}
				}
				for _, fam := range []string{"vsock", "packet", "alg", "netlink_uevent", "netlink_audit", "key", "bluetooth", "tipc"} {
					if got[fam] != "operation not permitted" {
						t.Errorf("socket %s: %q, want EPERM", fam, got[fam])
					}
				}
			})
			for _, op := range []string{"ptrace", "keyctl"} {
				t.Run(op, func(t *testing.T) {
					out, err := run(t, s, `{"op":"`+op+`"}`, 30*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					if m := decode(t, out); m["error"] != "operation not permitted" {
						t.Fatalf("%s: %v, want EPERM", op, m["error"])
					}
				})
			}
			t.Run("compat ABI", func(t *testing.T) {
				if runtime.GOARCH != "amd64" {
					t.Skip("the 32-bit syscall probe is amd64 only")
				}
				// Only the native ABI is in the filter: a syscall through int 0x80 kills the
				// tool (or at least does not run); the compat ABI is not reachable.
				out, err := run(t, s, `{"op":"compat"}`, 3*time.Second)
				if err != nil || out.ExitCode != 0 {
					return
				}
				var m map[string]float64
				if json.Unmarshal(out.Output, &m) == nil && m["compat_getpid"] == m["pid"] {
					t.Fatalf("getpid through the 32-bit ABI ran: %s", out.Output)
				}
			})
			t.Run("busybox sh", func(t *testing.T) {
				c := probeCall(`{"sh":1}`)
				c.Tool, c.Dir = "shjson", filepath.Join(env.toolsDir, "shjson")
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				out, err := s.Run(ctx, c)
				if err != nil {
					t.Fatal(err)
				}
				if m := decode(t, out); m["sh"] != float64(1) {
					t.Fatalf("output %s", out.Output)
				}
			})
			t.Run("python", func(t *testing.T) {
				if rt == "" {
					t.Skip("no runtime root with Python: the host has no /usr/bin/python3 and its standard library")
				}
				c := sandbox.Call{ID: uuid.NewString(), Tool: "pytool", Runtime: isolation.RequirePython, Dir: py,
					Entrypoint: filepath.Join(py, "run.py"), Input: []byte(`{"x":1}`), Limits: sandbox.Limits{Timeout: 30 * time.Second}.WithDefaults()}
				ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
				defer cancel()
				out, err := s.Run(ctx, c)
				if err != nil {
					t.Fatal(err)
				}
				m := decode(t, out)
				if m["sh"] != "hi" || m["thread"] != true || m["lock"] != true || m["tcp"] != true || m["urandom"] != float64(8) {
					t.Fatalf("python tool: %s (stderr %q)", out.Output, out.Stderr)
				}
				if m["vsock"] != float64(unix.EPERM) {
					t.Fatalf("python socket(AF_VSOCK): errno %v, want EPERM", m["vsock"])
				}
			})
		})
	}
}
