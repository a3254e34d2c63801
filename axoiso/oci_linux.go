package axoiso

import (
	"log/slog"
	"time"

	"github.com/axocoatl/isolation"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/oci"
)

func init() {
	tierBuilders = append(tierBuilders, tierBuilder{tier: isolation.TierOCI, reap: func(c Config, log *slog.Logger) {
		oci.ReapDead(oci.Config{StateRoot: c.Oci.StateRoot, Backend: c.Oci.Backend, RuntimeBinary: c.Oci.RuntimeBinary,
			UseSystemd: c.Oci.UseSystemd, Logger: log.With("tier", isolation.TierOCI.String())})
	}, build: func(c Config, log *slog.Logger) (sandbox.Sandbox, error) {
		root := c.Oci.RuntimeRoot
		if root == "" {
			// The guest root of the microVM tier doubles as the runtime root here, so Python, Shell
			// and Arbitrary tools still run, in a container, on a host without a VMM.
			root, _ = microvm.RuntimeRoot(c.vmDataDir())
		}
		gate, prefix, err := tierEgress(c, log)
		if err != nil {
			return nil, err
		}
		return oci.New(oci.Config{
			StateRoot:       c.Oci.StateRoot,
			BundleRoot:      c.ToolsRoot,
			UseSystemd:      c.Oci.UseSystemd,
			Backend:         c.Oci.Backend,
			RuntimeBinary:   c.Oci.RuntimeBinary,
			RuntimeRoot:     root,
			MemoryMB:        c.Oci.MemoryMB,
			Pids:            c.Oci.Pids,
			CPUs:            c.Oci.CPUs,
			Gate:            gate,
			NetPrefix:       prefix,
			IOSizeMB:        c.Oci.IOSizeMB,
			PoolSize:        c.Oci.PoolSize,
			PoolIdle:        time.Duration(c.Oci.PoolIdle),
			PoolMaxTotal:    c.Oci.PoolMaxTotal,
			PoolMaxMemoryMB: c.Oci.PoolMaxMemoryMB,
			IDUser:          c.Oci.IDUser,
			IDSlots:         c.Oci.IDSlots,
			Logger:          log,
		})
	}})
}
