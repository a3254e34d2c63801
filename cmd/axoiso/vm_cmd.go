package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/axocoatl/isolation/sandbox/microvm"
)

func init() {
	register(command{name: "vm", summary: "microVM tier: `vm prepare` builds the guest kernel and root (idempotent)", run: runVM})
}

func runVM(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "prepare" {
		return usagef("usage: axoiso vm prepare [--agent FILE] [--kernel FILE [--modules-dir DIR]] [--ext4=false] [--force] [--data-dir DIR]")
	}
	fs := newFlagSet("vm prepare", stderr)
	var cf commonFlags
	cf.add(fs)
	agent := fs.String("agent", "", "the static guest agent binary (default: axoiso-guest beside axoiso)")
	kernel := fs.String("kernel", "", "a guest kernel to use instead of Debian's cloud kernel (vmlinux, or bzImage with gzip/LZ4 payload)")
	modules := fs.String("modules-dir", "", "with --kernel: its /lib/modules/RELEASE directory")
	_, mkfsErr := exec.LookPath("mkfs.ext4")
	ext4 := fs.Bool("ext4", mkfsErr == nil, "also build the root as a read-only ext4 drive behind a small boot initramfs (faster boots, smaller snapshots; needs mkfs.ext4; default: when mkfs.ext4 is installed)")
	force := fs.Bool("force", false, "rebuild even when the prepared image is current")
	dataDir := fs.String("data-dir", "", "where the image goes (default the config's data_dir/vm: /var/lib/axocoatl/vm as root)")
	asJSON := fs.Bool("json", false, "print the prepared image as JSON")
	if err := parseFlagsOnly(fs, args[1:]); err != nil {
		return err
	}
	cfg, log, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	if *dataDir == "" {
		*dataDir = filepath.Join(cfg.DataDir, "vm")
	}
	if *agent == "" {
		*agent = defaultAgent()
	}
	if _, err := os.Stat(*agent); err != nil {
		return fmt.Errorf("guest agent %s: %w (build it: CGO_ENABLED=0 go build -o %s ./cmd/axoiso-guest, or pass --agent)", *agent, err, *agent)
	}
	img, err := microvm.Prepare(ctx, microvm.PrepareConfig{DataDir: *dataDir, Agent: *agent, Kernel: *kernel, ModulesDir: *modules, Ext4: *ext4, Force: *force, Logger: log})
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, img)
	}
	fmt.Fprintf(stdout, "guest image ready in %s (kernel %s, built in %.1fs)\n", img.Dir, img.KernelRelease, img.PrepareSeconds)
	fmt.Fprintf(stdout, "  kernel  %s\n  initrd  %s\n  rootfs  %s\n", img.Kernel, img.Initrd, img.RootFS)
	if img.Ext4 != "" {
		fmt.Fprintf(stdout, "  ext4    %s\n", img.Ext4)
	}
	return nil
}

// defaultAgent is axoiso-guest beside this executable.
func defaultAgent() string {
	exe, err := os.Executable()
	if err != nil {
		return "axoiso-guest"
	}
	return filepath.Join(filepath.Dir(exe), "axoiso-guest")
}
