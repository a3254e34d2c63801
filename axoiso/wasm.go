package axoiso

import (
	"log/slog"
	"path/filepath"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

func init() {
	tierBuilders = append(tierBuilders, tierBuilder{tier: isolation.TierWasm, build: func(c Config, log *slog.Logger) (sandbox.Sandbox, error) {
		s, err := wasm.New(wasm.Config{CacheDir: filepath.Join(c.CacheDir, "wazero"), Logger: log})
		if err != nil {
			// The disk cache only saves compile time in later processes: without it, still serve.
			log.Warn("Wasm compilation cache unusable; compiling in memory only", "error", err)
			return wasm.New(wasm.Config{Logger: log})
		}
		return s, nil
	}})
}
