package axoiso

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

func init() {
	tierBuilders = append(tierBuilders, tierBuilder{tier: isolation.TierWasm, build: func(c Config, log *slog.Logger) (sandbox.Sandbox, error) {
		cfg := c.Wasm.sandboxConfig(log)
		cfg.CacheDir = filepath.Join(c.CacheDir, "wazero")
		// The http_request host function dials through the same gate as the Oci tier's proxy,
		// under each call's effective policy.
		gate, err := egressGate(c, log)
		if err != nil {
			// Tools without a network policy still run; those with one are refused, saying why.
			log.Warn("no egress gate: Wasm tools with a network policy are refused", "error", err)
		}
		cfg.Gate = gate
		if cfg.HTTP.RootCAs, err = c.Wasm.HTTP.rootCAs(); err != nil {
			return nil, err
		}
		s, err := wasm.New(cfg)
		if err != nil {
			// The disk cache only saves compile time in later processes: without it, still serve.
			log.Warn("Wasm compilation cache unusable; compiling in memory only", "error", err)
			cfg.CacheDir = ""
			return wasm.New(cfg)
		}
		return s, nil
	}})
}

// sandboxConfig is the tier's configuration without a compilation cache.
func (w WasmConfig) sandboxConfig(log *slog.Logger) wasm.Config {
	return wasm.Config{
		MaxConcurrency: w.MaxConcurrency,
		MaxQueued:      w.MaxQueued,
		QueueTimeout:   time.Duration(w.QueueTimeout),
		MaxModules:     w.MaxModules,
		MaxModuleBytes: min(w.MaxModuleMB, 1<<30) << 20, // 1 PiB: no wrap to "no bound"
		Logger:         log,
		HTTP: wasm.HTTPConfig{
			// A body is held in the host's and the guest's memory (which is at most 4 GiB).
			MaxRequestBytes:  min(w.HTTP.MaxRequestBytes, 1<<30),
			MaxResponseBytes: min(w.HTTP.MaxResponseBytes, 1<<30),
			MaxRequests:      w.HTTP.MaxRequests,
			MaxRedirects:     w.HTTP.MaxRedirects,
			Timeout:          time.Duration(w.HTTP.Timeout),
		},
	}
}
