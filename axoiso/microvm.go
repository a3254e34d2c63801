package axoiso

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/axocoatl/isolation"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/firecracker"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// vmDataDir is where `axoiso vm prepare` puts the guest kernel and root.
func (c Config) vmDataDir() string { return filepath.Join(c.DataDir, "vm") }

func init() {
	tierBuilders = append(tierBuilders, tierBuilder{tier: isolation.TierMicroVM, reap: func(c Config, log *slog.Logger) {
		microvm.ReapDead(c.VM.RunDir, log.With("tier", isolation.TierMicroVM.String()))
	}, build: func(c Config, log *slog.Logger) (sandbox.Sandbox, error) {
		q := qemu.New(qemu.Config{KVM: c.VM.KVM == "on" || c.VM.KVM == "auto" && qemu.KVMUsable()})
		jailer, err := c.VM.jailer(hostLookPath, os.Geteuid())
		if err != nil {
			return nil, err
		}
		gate, prefix, err := tierEgress(c, log)
		if err != nil {
			return nil, err
		}
		return microvm.New(microvm.Config{
			// Firecracker where it probes available (KVM + binary), QEMU microvm otherwise.
			Drivers:         []microvm.Driver{firecracker.New(firecracker.Config{Binary: c.VM.Firecracker, Jailer: jailer}), q},
			DataDir:         c.vmDataDir(),
			RunDir:          c.VM.RunDir,
			VCPUs:           c.VM.VCPUs,
			PoolSize:        c.VM.PoolSize,
			Snapshots:       c.VM.Snapshot,
			PoolIdle:        time.Duration(c.VM.PoolIdle),
			MaxShapes:       c.VM.MaxShapes,
			PoolMaxTotal:    c.VM.PoolMaxTotal,
			PoolMaxMemoryMB: c.VM.PoolMaxMemoryMB,
			DriveCacheBytes: int64(c.VM.DriveCacheMB) << 20,
			Gate:            gate,
			NetPrefix:       prefix,
			// The command line is one line, and the agent's own axocoatl.* arguments come first.
			ExtraCmdline: strings.Join(strings.Fields(c.VM.KernelArgs), " "),
			Logger:       log,
		})
	}})
}
