package axoiso

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/axocoatl/isolation/sandbox/microvm/firecracker"
)

// DefaultJailerID is the uid and gid a jailed Firecracker runs as by default: above the ranges
// Debian and systemd hand out, and outside the QEMU driver's per-VM range (qemu.DefaultUIDBase +
// 64 Ki).
const DefaultJailerID = 0x71010000

// jailer resolves the vm.jailer configuration into the Firecracker driver's jailer (nil: run
// Firecracker directly). lookPath and euid are the host's (parameters for tests).
func (c VMConfig) jailer(lookPath func(string) (string, error), euid int) (*firecracker.Jailer, error) {
	j := c.Jailer
	switch j.Mode {
	case "", "auto", "on", "off":
	default:
		return nil, fmt.Errorf("config: vm.jailer.mode %q: want auto, on or off", j.Mode)
	}
	if j.Mode == "off" || (j.Mode != "on" && euid != 0) {
		return nil, nil
	}
	fc := c.Firecracker
	if fc == "" {
		fc, _ = lookPath("firecracker")
	}
	if fc != "" {
		if abs, err := filepath.Abs(fc); err == nil {
			fc = abs
		}
	}
	bin := j.Binary
	if bin == "" && fc != "" {
		if beside := filepath.Join(filepath.Dir(fc), "jailer"); executableFile(beside) {
			bin = beside
		}
	}
	if bin == "" {
		bin, _ = lookPath("jailer")
	}
	if bin == "" || fc == "" {
		if j.Mode == "on" {
			// Firecracker's Probe then says the jailer is missing: the tier is unavailable,
			// never run unjailed against the configuration.
			return &firecracker.Jailer{ExecFile: fc, UID: j.uid(), GID: j.gid(), ChrootBaseDir: j.base(), Binary: "/nonexistent/jailer"}, nil
		}
		return nil, nil
	}
	if abs, err := filepath.Abs(bin); err == nil {
		bin = abs
	}
	return &firecracker.Jailer{Binary: bin, ExecFile: fc, UID: j.uid(), GID: j.gid(), ChrootBaseDir: j.base()}, nil
}

func (j JailerConfig) uid() int {
	if j.UID > 0 {
		return j.UID
	}
	return DefaultJailerID
}

func (j JailerConfig) gid() int {
	if j.GID > 0 {
		return j.GID
	}
	return DefaultJailerID
}

func (j JailerConfig) base() string {
	if j.ChrootBaseDir != "" {
		return filepath.Clean(j.ChrootBaseDir)
	}
	return "/srv/jailer"
}

func executableFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

var hostLookPath = exec.LookPath
