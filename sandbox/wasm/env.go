package wasm

import (
	"strings"

	"github.com/tetratelabs/wazero"
)

// withEnv gives the instance the call's environment (WASI environ). A snapshot-mode module read
// its environment, if at all, when it was initialised: Go's runtime copies it in _initialize, so
// a Go reactor sees none of it; a command module (a fresh _start per call) sees all of it.
func withEnv(mc wazero.ModuleConfig, env []string) wazero.ModuleConfig {
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		mc = mc.WithEnv(k, v)
	}
	return mc
}
