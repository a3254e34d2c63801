//go:build !linux

package microvm

import (
	"log/slog"
	"os"

	"github.com/axocoatl/isolation/internal/keeper"
)

// The microVM tier runs only on Linux: elsewhere New works (Probe then says no VMM is available),
// but nothing is ever started, so there is nothing to reap.

const noFollow = 0

func claimRunDir(dir string, log *slog.Logger) (*os.File, *keeper.Keeper, error) {
	return nil, nil, nil
}

// ReapDead does nothing outside Linux: no VM is ever started there.
func ReapDead(root string, log *slog.Logger) {}

func reapOrphans(root string, log *slog.Logger) {}
