// Package testguest gives tests a microVM guest prepared with this tree's agent: built once per
// agent build (in /var/cache/axocoatl-test/microvm-<agent hash>, shared by every package's
// tests) and reused. It is apart from testutil so that tests that never boot a VM (the Oci
// tier's, whose test binary is also its containers' init) do not link the microVM tier.
package testguest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// cacheBase holds the prepared guests, one folder per agent build.
const cacheBase = "/var/cache/axocoatl-test"

// DataDir returns a data dir (the config's data_dir) whose vm/ holds a guest prepared with this
// tree's agent, or skips t saying what is missing (root, QEMU, e2fsprogs, a Debian mirror). The
// data dir is t's own and world-searchable (VMMs run as unprivileged uids and open the image
// through it); the guest itself is shared.
func DataDir(t testing.TB) string {
	t.Helper()
	testutil.RequiresRoot(t, "containers and VMs")
	testutil.RequiresBinary(t, "qemu-system-x86_64", "qemu-system-x86")
	testutil.RequiresBinary(t, "mkfs.ext4", "e2fsprogs")
	tmp := t.TempDir()
	agent := filepath.Join(tmp, "axoiso-guest")
	build := exec.Command(wasmbuild.GoCommand(), "build", "-trimpath", "-o", agent, "github.com/axocoatl/isolation/cmd/axoiso-guest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v: %s", err, out)
	}
	b, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	vmDir := filepath.Join(cacheBase, "microvm-"+hex.EncodeToString(sum[:6]))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := microvm.Prepare(ctx, microvm.PrepareConfig{DataDir: vmDir, Agent: agent, Ext4: true}); err != nil {
		t.Skipf("vm prepare failed (no Debian mirror?): %v", err)
	}
	data, err := os.MkdirTemp("", "axo-guest-data-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	_ = os.Chmod(data, 0o755)
	if err := os.Symlink(vmDir, filepath.Join(data, "vm")); err != nil {
		t.Fatal(err)
	}
	return data
}

// VMDir is the prepared guest itself (kernel, rootfs/, rootfs.ext4) below a data dir from DataDir.
func VMDir(dataDir string) string { return filepath.Join(dataDir, "vm") }
