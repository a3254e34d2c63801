package oci

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
)

// busyboxRuntimeRoot builds a runtime root with busybox (sh, cat) for Shell and Arbitrary tools.
func busyboxRuntimeRoot(t testing.TB) string {
	t.Helper()
	rt := filepath.Join(t.TempDir(), "rootfs")
	testutil.BusyboxTree(t, rt, "sh", "cat")
	return rt
}

// probeArbitraryCall runs the probe tool as an Arbitrary tool on the runtime root.
func probeArbitraryCall(t testing.TB, input string) sandbox.Call {
	t.Helper()
	dir := filepath.Join(env.toolsDir, "probe-arb")
	if _, err := os.Stat(filepath.Join(dir, "probe")); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := copyFile(env.probeBin, filepath.Join(dir, "probe")); err != nil {
			t.Fatal(err)
		}
	}
	return sandbox.Call{ID: uuid.NewString(), Tool: "probe-arb", Runtime: isolation.RequireArbitrary, Dir: dir,
		Entrypoint: filepath.Join(dir, "probe"), Input: []byte(input), Limits: sandbox.Limits{Timeout: 20 * time.Second}.WithDefaults()}
}

// A tool cannot write more into /axocoatl than the I/O dir's cap (it wrote 2 GiB into the state
// root on the host's disk), in every way a call gets its container: a bundle cold, a bundle from
// the warm pool, a tool on the runtime root. /tmp and /dev/shm keep their caps.
func TestIODirCapped(t *testing.T) {
	needContainers(t)
	rt := busyboxRuntimeRoot(t)
	s := newSandbox(t, func(c *Config) { c.RuntimeRoot = rt; c.PoolSize = 1 })
	const ask = 96 << 20 // far above every cap, bounded so that a failure does not fill the disk
	fill := func(path string) string { return fmt.Sprintf(`{"op":"fill","path":%q,"n":%d}`, path, ask) }
	ioCap := s.ioSize(sandbox.DefaultMaxOutputBytes, 4096)
	cases := []struct {
		name  string
		call  sandbox.Call
		pool  bool
		limit int64
	}{
		{"bundle cold", probeCall(fill("/axocoatl/big")), false, ioCap},
		{"bundle pooled", probeCall(fill("/axocoatl/big")), true, ioCap},
		{"runtime root cold", probeArbitraryCall(t, fill("/axocoatl/big")), false, ioCap},
		{"runtime root pooled", probeArbitraryCall(t, fill("/axocoatl/big")), true, ioCap},
		{"tmp", probeCall(fill("/tmp/big")), false, int64(DefaultTmpSizeMB) << 20},
		{"dev shm", probeCall(fill("/dev/shm/big")), false, 64 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if tc.pool {
				if err := s.Prepare(ctx, tc.call); err != nil {
					t.Fatal(err)
				}
				if st := s.PoolStats(); len(st) == 0 {
					t.Fatal("no pool")
				}
			}
			out, err := s.Run(ctx, tc.call)
			if err != nil {
				t.Fatal(err)
			}
			m := decode(t, out)
			n, _ := m["written"].(float64)
			if !strings.Contains(fmt.Sprint(m["error"]), "no space left") || int64(n) > tc.limit || n <= 0 {
				t.Fatalf("wrote %v bytes (error %v): want ENOSPC after at most %d bytes", n, m["error"], tc.limit)
			}
		})
	}
	// The cap grows with the input: a pooled container (sized before its input was known) and a
	// cold one both take an input larger than the configured room.
	big := `{"op":"echo","pad":"` + strings.Repeat("p", 5<<20) + `"}`
	for _, pooled := range []bool{false, true} {
		t.Run("large input pooled="+strconv.FormatBool(pooled), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c := probeCall(big)
			c.Limits.MaxOutputBytes = 8 << 20
			if pooled {
				if err := s.Prepare(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			out, err := s.Run(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Output) < 5<<20 {
				t.Fatalf("output of %d bytes", len(out.Output))
			}
		})
	}
}

// Tearing a call down must not depend on what the tool built in /axocoatl: a tree 30,000
// directories deep made the host's recursive delete run out of descriptors, and the I/O dir
// survived the call.
func TestIODirDeepTree(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	out, err := run(t, s, `{"op":"deeptree","path":"/axocoatl","n":30000}`, 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := decode(t, out)
	depth, _ := m["depth"].(float64)
	if depth < 1000 {
		t.Fatalf("the tool built a tree only %v deep (%v): the test proves nothing", depth, m["error"])
	}
	t.Logf("the tool nested %v directories (%v)", depth, m["error"])
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s.cfg)
}

// The reaper of a dead owner's leftovers unmounts I/O tmpfs mounts and removes directories
// whatever their depth: a plain I/O dir (an older or rootless owner's) and a mounted one, each
// holding a tree 30,000 deep.
func TestReapDeepLeftovers(t *testing.T) {
	needContainers(t)
	// On a tmpfs: 60,000 directories on this machine's shared disk take minutes.
	stateRoot := t.TempDir()
	if err := unix.Mount("tmpfs", stateRoot, "tmpfs", 0, "size=256m,mode=0711"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(stateRoot, unix.MNT_DETACH) })
	plain := filepath.Join(stateRoot, "axocoatl-deep-"+uuid.NewString())
	mounted := filepath.Join(stateRoot, "axocoatl-deepmnt-"+uuid.NewString())
	for _, d := range []string{plain, mounted} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", mounted, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mounted, unix.MNT_DETACH) })
	for _, d := range []string{plain, mounted} {
		if err := nest(d, 30000); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Config{StateRoot: stateRoot, BundleRoot: env.toolsDir, CgroupParent: "axocoatl-test-" + uuid.NewString()[:8]})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{plain, mounted} {
		if _, err := os.Lstat(d); err == nil {
			t.Errorf("%s survived the reap", filepath.Base(d))
		}
	}
	assertClean(t, s.cfg)
}

// nest makes a chain of n directories below dir holding one descriptor at a time.
func nest(dir string, n int) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			unix.Close(fd)
			return fmt.Errorf("depth %d: %w", i, err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			return err
		}
		fd = next
	}
	if err := unix.Mkdirat(fd, "x", 0); err != nil { // an unreadable leaf directory
		unix.Close(fd)
		return err
	}
	return unix.Close(fd)
}

// removeTree needs no root: it removes deep, wide and unreadable trees and never follows a
// symlink out of the tree.
func TestRemoveTree(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "keep")
	if err := os.WriteFile(victim, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		build func(dir string) error
	}{
		{"deep", func(dir string) error { return nest(dir, 30000) }},
		{"wide", func(dir string) error {
			for i := range 3000 {
				if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(i)), nil, 0o644); err != nil {
					return err
				}
			}
			return os.MkdirAll(filepath.Join(dir, "a", "b", "c"), 0o755)
		}},
		{"symlinks", func(dir string) error {
			if err := os.Symlink(outside, filepath.Join(dir, "out")); err != nil {
				return err
			}
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				return err
			}
			return os.Symlink(outside, filepath.Join(dir, "sub", "out"))
		}},
		{"unreadable", func(dir string) error {
			if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
				return err
			}
			return os.Chmod(filepath.Join(dir, "a"), 0)
		}},
		{"empty", func(string) error { return nil }},
	}
	// On a tmpfs where there is one: 30,000 directories on a slow shared disk take minutes.
	scratch, err := os.MkdirTemp("/dev/shm", "axo-rmtree-")
	if err != nil {
		scratch = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(scratch) })
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(scratch, "tree"+strconv.Itoa(i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tc.build(dir); err != nil {
				t.Fatal(err)
			}
			if err := removeTree(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(dir); err == nil {
				t.Fatal("the tree survived")
			}
			if _, err := os.Stat(victim); err != nil {
				t.Fatalf("a file outside the tree was removed: %v", err)
			}
		})
	}
	if err := removeTree(filepath.Join(outside, "missing")); err != nil {
		t.Fatalf("a missing dir: %v", err)
	}
}
