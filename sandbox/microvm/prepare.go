package microvm

import (
	"context"

	"github.com/axocoatl/isolation/internal/vmimage"
)

// PrepareConfig configures Prepare (`axoiso vm prepare`).
type PrepareConfig = vmimage.Config

// Image is a prepared guest (kernel, initramfs, root directory, optional ext4 image).
type Image = vmimage.Image

// DefaultDataDir is where the guest image lives unless configured otherwise.
const DefaultDataDir = vmimage.DefaultDataDir

// ErrNotPrepared matches the error of LoadImage and RuntimeRoot before Prepare ran.
var ErrNotPrepared = vmimage.ErrNotPrepared

// Prepare obtains the guest kernel (Debian's cloud kernel via apt unless cfg.Kernel names one),
// builds the guest root (the agent as /init, Python 3, dash, busybox from Debian packages) as
// {DataDir}/rootfs, {DataDir}/initramfs.cpio and, with cfg.Ext4, {DataDir}/rootfs.ext4, and
// records it in {DataDir}/manifest.json. Idempotent: a current image is returned as is.
// Needs root, apt-get and dpkg-deb (and mkfs.ext4 for Ext4).
func Prepare(ctx context.Context, cfg PrepareConfig) (Image, error) { return vmimage.Prepare(ctx, cfg) }

// LoadImage returns the image prepared in dataDir ("" = DefaultDataDir).
func LoadImage(dataDir string) (Image, error) { return vmimage.Load(dataDir) }

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
