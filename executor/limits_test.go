package executor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

// wasmGuest builds the Wasm tier's test guest (its behaviour picked by input.mode), shared with
// that tier's tests through the build cache.
func wasmGuest(t *testing.T) []byte {
	t.Helper()
	return testutil.WasmModule(t, "../sandbox/wasm/testdata/guest", wasmbuild.Config{})
}

// limitsExecutor is an executor over the None and Wasmtime tiers (real wazero) whose tools root
// holds the given tool.json files; the Wasm ones run the test guest, compiled once into cacheDir.
// Its log goes to logs.
func limitsExecutor(t *testing.T, cfg executor.Config, tools map[string]string, cacheDir string, logs *bytes.Buffer) *executor.Executor {
	t.Helper()
	root := t.TempDir()
	var guest []byte
	for name, manifest := range tools {
		dir := filepath.Join(root, name)
		os.MkdirAll(dir, 0o755)
		if err := os.WriteFile(filepath.Join(dir, "tool.json"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(manifest, "WasmCompiled") {
			if guest == nil {
				guest = wasmGuest(t)
			}
			os.WriteFile(filepath.Join(dir, "guest.wasm"), guest, 0o644)
		}
	}
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := wasm.New(wasm.Config{CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	nat := native.NewWithBuiltins()
	wait := func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	echo := func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }
	nat.Register(native.Tool{Name: "n-wait", Func: wait})
	nat.Register(native.Tool{Name: "n-hour", Func: echo})
	nat.Register(native.Tool{Name: "n-fast", Func: echo})
	cfg.Catalog, cfg.Sandboxes = cat, []sandbox.Sandbox{nat, ws}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	}
	e, err := executor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// A tool asking for more than the operator's ceiling of the tier it runs in gets the ceiling,
// the result says so, and the tier enforces the ceiling, not the request.
func TestCeilingsPerTier(t *testing.T) {
	tools := map[string]string{
		"n-hour":    `{"runtime":"NativeTrusted","timeout_ms":3600000}`,
		"n-fast":    `{"runtime":"NativeTrusted","timeout_ms":1500}`,
		"w-greedy":  `{"runtime":"WasmCompiled","entrypoint":"guest.wasm","memory_mb":2048,"timeout_ms":3600000}`,
		"w-default": `{"runtime":"WasmCompiled","entrypoint":"guest.wasm"}`,
		"w-modest":  `{"runtime":"WasmCompiled","entrypoint":"guest.wasm","memory_mb":32}`,
	}
	greet := `{"mode":"greet","name":"x"}`
	tests := []struct {
		name, tool, input string
		cfg               executor.Config
		opts              []executor.Option
		want              executor.Limits
		kind              error  // the call's error class, nil for success
		says              string // in the error
	}{
		{name: "None: timeout_ms over the default ceiling", tool: "n-hour", input: `{}`,
			want: executor.Limits{TimeoutMS: 60000, MaxOutputBytes: 1 << 20, Clamped: []executor.Clamp{{Limit: "timeout_ms", Asked: 3600000, Granted: 60000}}}},
		{name: "None: under the ceiling", tool: "n-fast", input: `{}`,
			want: executor.Limits{TimeoutMS: 1500, MaxOutputBytes: 1 << 20}},
		{name: "None: WithTimeout over the ceiling", tool: "n-fast", input: `{}`, opts: []executor.Option{executor.WithTimeout(2 * time.Hour)},
			want: executor.Limits{TimeoutMS: 60000, MaxOutputBytes: 1 << 20, Clamped: []executor.Clamp{{Limit: "timeout_ms", Asked: 7200000, Granted: 60000}}}},
		{name: "None: the ceiling holds also under strict", tool: "n-hour", input: `{}`, cfg: executor.Config{Strict: true, MaxTimeout: 5 * time.Second},
			want: executor.Limits{TimeoutMS: 5000, MaxOutputBytes: 1 << 20, Clamped: []executor.Clamp{{Limit: "timeout_ms", Asked: 3600000, Granted: 5000}}}},
		{name: "Wasmtime: memory_mb and timeout_ms over the default ceilings", tool: "w-greedy", input: greet,
			want: executor.Limits{TimeoutMS: 60000, MemoryMB: 256, MaxOutputBytes: 1 << 20, Clamped: []executor.Clamp{
				{Limit: "timeout_ms", Asked: 3600000, Granted: 60000}, {Limit: "memory_mb", Asked: 2048, Granted: 256}}}},
		{name: "Wasmtime: no memory_mb is the tier's default", tool: "w-default", input: greet,
			want: executor.Limits{TimeoutMS: 10000, MemoryMB: wasm.DefaultMemoryMB, MaxOutputBytes: 1 << 20}},
		{name: "Wasmtime: under the ceiling", tool: "w-modest", input: greet,
			want: executor.Limits{TimeoutMS: 10000, MemoryMB: 32, MaxOutputBytes: 1 << 20}},
		{name: "Wasmtime: an operator ceiling lowers the tier's default too", tool: "w-default", input: greet,
			cfg:  executor.Config{MaxMemoryMB: map[isolation.Tier]int{isolation.TierWasm: 48}},
			want: executor.Limits{TimeoutMS: 10000, MemoryMB: 48, MaxOutputBytes: 1 << 20}},
		{name: "Wasmtime: the ceiling, not the request, stops a memory bomb", tool: "w-greedy", input: `{"mode":"bomb"}`,
			cfg:  executor.Config{MaxMemoryMB: map[isolation.Tier]int{isolation.TierWasm: 48}},
			kind: isolation.ErrMemoryLimit, says: "limit of 48 MiB"},
		{name: "None: the ceiling, not the request, stops the call", tool: "n-wait", input: `{}`,
			cfg:  executor.Config{MaxTimeout: 50 * time.Millisecond},
			opts: []executor.Option{executor.WithTimeout(time.Hour)},
			kind: isolation.ErrTimeout, says: "stopped after 50ms (the ceiling; 3600000 ms were asked for)"},
	}
	tools["n-wait"] = `{"runtime":"NativeTrusted"}`
	cacheDir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			e := limitsExecutor(t, tt.cfg, tools, cacheDir, &logs)
			res, err := e.Execute(context.Background(), tt.tool, []byte(tt.input), tt.opts...)
			if tt.kind != nil {
				if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.says) {
					t.Fatalf("err = %v, want %v saying %q", err, tt.kind, tt.says)
				}
				if !strings.Contains(logs.String(), `"clamped":"`) {
					t.Errorf("the failed call's log record does not say what was clamped: %s", logs.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(res.Limits, tt.want) {
				t.Fatalf("limits = %+v, want %+v", res.Limits, tt.want)
			}
			// The envelope carries them, and the call's log record says what was clamped.
			b, _ := json.Marshal(res)
			var env struct{ Limits executor.Limits }
			if err := json.Unmarshal(b, &env); err != nil || !reflect.DeepEqual(env.Limits, tt.want) {
				t.Fatalf("envelope %s: limits %+v (%v)", b, env.Limits, err)
			}
			var rec map[string]any
			if err := json.Unmarshal(logs.Bytes(), &rec); err != nil {
				t.Fatalf("log %q: %v", logs.String(), err)
			}
			if rec["timeout_ms"] != float64(tt.want.TimeoutMS) || rec["memory_mb"] != float64(tt.want.MemoryMB) {
				t.Errorf("log record %v lacks the effective limits %+v", rec, tt.want)
			}
			clamped, _ := rec["clamped"].(string)
			for _, c := range tt.want.Clamped {
				if !strings.Contains(clamped, c.Limit) {
					t.Errorf("log record's clamped %q does not name %s", clamped, c.Limit)
				}
			}
			if len(tt.want.Clamped) == 0 && rec["clamped"] != nil {
				t.Errorf("log record says %v was clamped; nothing was", rec["clamped"])
			}
		})
	}
}

// Ceilings the tiers cannot apply are refused when the executor is made, not discovered in calls.
func TestCeilingConfigErrors(t *testing.T) {
	cat, err := catalog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cfg  executor.Config
		says string
	}{
		{"Wasm ceiling over 4 GiB", executor.Config{MaxMemoryMB: map[isolation.Tier]int{isolation.TierWasm: 8192}}, "MaxMemoryMB[Wasmtime]"},
		{"Oci ceiling that overflows bytes", executor.Config{MaxMemoryMB: map[isolation.Tier]int{isolation.TierOCI: 1 << 44}}, "MaxMemoryMB[Oci]"},
		{"the None tier", executor.Config{MaxMemoryMB: map[isolation.Tier]int{isolation.TierNone: 64}}, "None"},
		{"output over what tiers keep", executor.Config{MaxOutputBytes: 1 << 40}, "MaxOutputBytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Catalog = cat
			_, err := executor.New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("err = %v, want one naming %s", err, tt.says)
			}
		})
	}
}
