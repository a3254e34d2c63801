package assemble

import (
	"log/slog"
	"path/filepath"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

func init() {
	tierBuilders = append(tierBuilders, func(c Config, log *slog.Logger) (sandbox.Sandbox, error) {
		return wasm.New(wasm.Config{CacheDir: filepath.Join(c.CacheDir, "wazero"), Logger: log})
	})
}
