// Package testutil is what the project's tests share: one way to skip a test that cannot run on
// this host (with the reason and the fix), and the busybox trees the container and VM tests run
// tools on, and the quantiles benchmarks report. Only tests import it.
package testutil

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/axocoatl/isolation/sandbox"
)

// Busybox is where Debian's busybox-static puts its binary.
const Busybox = "/bin/busybox"

// RequiresRoot skips t unless the test runs as root; why says what needs it.
func RequiresRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root (%s)", why)
	}
}

// RequiresBusybox skips t unless a statically linked busybox is at Busybox (a dynamic one would
// not run in a tree without its libraries).
func RequiresBusybox(t testing.TB) {
	t.Helper()
	if why := busyboxMissing(); why != "" {
		t.Skip(why)
	}
}

func busyboxMissing() string {
	fi, err := os.Stat(Busybox)
	if err != nil || !fi.Mode().IsRegular() {
		return "needs a static busybox at " + Busybox + " (apt-get install busybox-static)"
	}
	f, err := elf.Open(Busybox)
	if err != nil {
		return Busybox + " is not an ELF binary"
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return Busybox + " is not statically linked (apt-get install busybox-static)"
		}
	}
	return ""
}

// RequiresBinary skips t unless name is on PATH, saying which Debian package has it; it returns
// the binary's path.
func RequiresBinary(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (apt-get install %s)", name, debianPackage)
	}
	return p
}

// RequiresAvailable skips t unless s's tier is available here, with the tier's reason and fix.
func RequiresAvailable(t testing.TB, s sandbox.Sandbox) {
	t.Helper()
	if a := s.Probe(context.Background()); !a.Available {
		t.Skipf("the %s tier is unavailable here: %s (fix: %s)", s.Tier(), a.Reason, a.Fix)
	}
}

// BusyboxTree fills dir (created if needed) with bin/busybox, a symlink per applet in bin/, and
// the empty directories a container or VM root needs (tmp, proc, sys, dev, axocoatl). It skips t when there is
// no static busybox.
func BusyboxTree(t testing.TB, dir string, applets ...string) {
	t.Helper()
	RequiresBusybox(t)
	for _, d := range []string{"bin", "tmp", "proc", "sys", "dev", "axocoatl"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(Busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
}

// Quantile is the q-quantile (0 ≤ q ≤ 1, nearest rank) of ds, which it leaves unchanged; 0 for
// none. Benchmarks report their p50 and p99 with it.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*q))]
}
