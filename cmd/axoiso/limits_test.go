package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// `axoiso run` applies the operator's ceilings like `serve` does: a tool's timeout_ms of an hour
// and memory_mb of 2 GB get the default ceilings (60 s; 256 MB in Wasmtime) or the config's, and
// the envelope says what was lowered.
func TestRunCapsToolLimits(t *testing.T) {
	mod, err := os.ReadFile(wasmGuest(t))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "greedy/tool.json"), []byte(`{"runtime":"WasmCompiled","entrypoint":"guest.wasm","memory_mb":2048,"timeout_ms":3600000}`), 0o644)
	writeFile(t, filepath.Join(root, "greedy/guest.wasm"), mod, 0o644)
	cache := t.TempDir()
	type clamp struct {
		Limit          string
		Asked, Granted int64
	}
	type limits struct {
		TimeoutMS      int64 `json:"timeout_ms"`
		MemoryMB       int   `json:"memory_mb"`
		MaxOutputBytes int64 `json:"max_output_bytes"`
		Clamped        []clamp
	}
	tests := []struct {
		name string
		cfg  map[string]any
		want limits
	}{
		{"default ceilings", map[string]any{}, limits{60000, 256, 1 << 20, []clamp{{"timeout_ms", 3600000, 60000}, {"memory_mb", 2048, 256}}}},
		{"the config's ceilings", map[string]any{"max_timeout": "5s", "max_memory_mb": map[string]int{"Wasmtime": 48}, "max_output_bytes": 4096},
			limits{5000, 48, 4096, []clamp{{"timeout_ms", 3600000, 5000}, {"memory_mb", 2048, 48}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg["cache_dir"] = cache
			tt.cfg["disable_tiers"] = []string{"Oci", "Firecracker"}
			code, out, errs := runAxoiso(t, "", "run", "--json", "--tools", root, "--config", configFile(t, tt.cfg), "--input", `{"name":"x"}`, "greedy")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			var env struct{ Limits limits }
			if err := json.Unmarshal([]byte(out), &env); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if !reflect.DeepEqual(env.Limits, tt.want) {
				t.Fatalf("envelope limits %+v, want %+v (%s)", env.Limits, tt.want, out)
			}
		})
	}
	t.Run("unknown tier in max_memory_mb", func(t *testing.T) {
		cfg := configFile(t, map[string]any{"max_memory_mb": map[string]int{"Docker": 64}})
		code, _, errs := runAxoiso(t, "", "run", "--tools", root, "--config", cfg, "--input", `{}`, "echo")
		if code == 0 || !strings.Contains(errs, `unknown tier "Docker"`) {
			t.Fatalf("exit %d, stderr %q: want a config error naming the tier", code, errs)
		}
	})
	t.Run("ceiling over what the tier can apply", func(t *testing.T) {
		cfg := configFile(t, map[string]any{"max_memory_mb": map[string]int{"Wasmtime": 8192}})
		code, _, errs := runAxoiso(t, "", "run", "--tools", root, "--config", cfg, "--input", `{}`, "echo")
		if code == 0 || !strings.Contains(errs, "MaxMemoryMB[Wasmtime]") {
			t.Fatalf("exit %d, stderr %q: want a config error", code, errs)
		}
	})
}
