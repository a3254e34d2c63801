package microvm

import (
	"context"
	"log/slog"

	"github.com/axocoatl/isolation/sandbox/microvm/internal/vmimage"
)

// DefaultDataDir is where the guest image lives unless configured otherwise.
const DefaultDataDir = vmimage.DefaultDataDir

// ErrNotPrepared matches the error of RuntimeRoot (and of a tier's probe) before Prepare ran.
var ErrNotPrepared = vmimage.ErrNotPrepared

// PrepareConfig configures Prepare (`axoiso vm prepare`).
type PrepareConfig struct {
	// DataDir holds the result (DefaultDataDir when "").
	DataDir string
	// Agent is the static axoiso-guest binary (default: "axoiso-guest" beside the running
	// executable).
	Agent string
	// Kernel is a guest kernel to use instead of Debian's (an ELF vmlinux or a bzImage with an
	// LZ4 or gzip payload); ModulesDir then optionally names its /lib/modules/<release> dir.
	Kernel     string
	ModulesDir string
	// Ext4 also builds rootfs.ext4 (needs mkfs.ext4 from e2fsprogs) and a small boot initramfs
	// that mounts it as the root drive.
	Ext4 bool
	// Force rebuilds even when the data dir is current.
	Force bool
	// Logger receives progress (slog.Default when nil).
	Logger *slog.Logger
}

// Image is where Prepare put the guest.
type Image struct {
	Dir string `json:"dir"`
	// Kernel is the uncompressed vmlinux, Initrd the initramfs of RootFS.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	// RootFS is the guest root as a plain directory (also the Oci tier's runtime root).
	RootFS string `json:"rootfs"`
	// Ext4 is the read-only ext4 image of RootFS and BootInitrd the initramfs that boots it
	// ("" when not built).
	Ext4           string  `json:"ext4,omitempty"`
	BootInitrd     string  `json:"boot_initrd,omitempty"`
	KernelRelease  string  `json:"kernel_release"`
	PrepareSeconds float64 `json:"prepare_seconds"`
}

// Prepare obtains the guest kernel (Debian's cloud kernel via apt unless cfg.Kernel names one),
// builds the guest root (the agent as /init, Python 3, dash, busybox from Debian packages) as
// {DataDir}/rootfs, {DataDir}/initramfs.cpio and, with cfg.Ext4, {DataDir}/rootfs.ext4, and
// records it in {DataDir}/manifest.json. Idempotent: a current image is returned as is.
// Needs root, apt-get and dpkg-deb (and mkfs.ext4 for Ext4).
func Prepare(ctx context.Context, cfg PrepareConfig) (Image, error) {
	img, err := vmimage.Prepare(ctx, vmimage.Config(cfg))
	if err != nil {
		return Image{}, err
	}
	return Image{Dir: img.Dir, Kernel: img.Kernel, Initrd: img.Initrd, RootFS: img.RootFS, Ext4: img.Ext4,
		BootInitrd: img.BootInitrd, KernelRelease: img.KernelRelease, PrepareSeconds: img.PrepareSeconds}, nil
}

// RuntimeRoot returns the prepared guest root directory of dataDir ("" = DefaultDataDir): a
// read-only root with python3, /bin/sh and busybox that the Oci tier uses as the root of bundles
// for Python, Shell and Arbitrary tools when no VMM exists. Its /init is the guest agent; the
// tool's folder must be mounted over it (e.g. at /axocoatl/tool) by the Oci tier.
func RuntimeRoot(dataDir string) (string, error) {
	img, err := vmimage.Load(dataDir)
	if err != nil {
		return "", err
	}
	return img.RootFS, nil
}
