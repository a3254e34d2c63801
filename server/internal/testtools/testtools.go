// Package testtools builds real executors for the server's tests: the in-process tier with test
// functions that misbehave on purpose, and a tools root with tool.json folders.
package testtools

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
)

// MaxOutputBytes is the executor's output limit in these fixtures.
const MaxOutputBytes = 1024

// Fixture is an executor over the in-process tier plus a tools root.
type Fixture struct {
	Exec *executor.Executor
	Root string
	// Native is the in-process sandbox; Closed counts its Close calls.
	Native *ClosingSandbox
	// Started receives once per call of "block" and "slow" when the function begins.
	Started chan string
	// Release unblocks every "block" call when closed.
	Release chan struct{}
	// SawCancel counts "block"/"slow" calls that ended because their context did.
	SawCancel atomic.Int64
}

// ClosingSandbox is the real in-process sandbox, counting Close calls so tests can see that the
// service tore its executor down.
type ClosingSandbox struct {
	*native.Sandbox
	Closed atomic.Int64
}

func (c *ClosingSandbox) Close() error {
	c.Closed.Add(1)
	return c.Sandbox.Close()
}

// Tools in the fixture's catalog folders (in-process functions of the same names):
//   - typed: input {"n": integer} (schema-checked) → {"double": 2n}
//   - list: input an array of numbers (an array schema) → {"sum": …}
//   - sleepy: timeout_ms 100, sleeps 10 s unless cancelled
//   - needs-wasm: a WasmCompiled tool (no Wasm tier in the fixture: tier unavailable)
//
// Built-ins registered directly: echo, json-stats, fail, badjson, badutf8 (output not UTF-8),
// badutf8-fail (stderr not UTF-8), huge, empty, panic, slow
// ({"ms": N}), block (waits for Release or cancellation).
func New(t testing.TB) *Fixture {
	t.Helper()
	f := &Fixture{Started: make(chan string, 64), Release: make(chan struct{})}
	f.Root = t.TempDir()
	WriteTool(t, f.Root, "typed", `{"runtime":"NativeTrusted","description":"Doubles n.","input_schema":{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}},"additionalProperties":false}}`)
	WriteTool(t, f.Root, "list", `{"runtime":"NativeTrusted","description":"Sums numbers.","input_schema":{"type":"array","items":{"type":"number"}}}`)
	WriteTool(t, f.Root, "sleepy", `{"runtime":"NativeTrusted","timeout_ms":100}`)
	WriteTool(t, f.Root, "needs-wasm", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm"}`)
	if err := os.WriteFile(filepath.Join(f.Root, "needs-wasm", "tool.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitCancel := func(ctx context.Context, d time.Duration) error {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-timer.C:
			return nil
		case <-ctx.Done():
			f.SawCancel.Add(1)
			return ctx.Err()
		}
	}
	tools := append(native.Builtin(),
		native.Tool{Name: "fail", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return nil, errors.New("boom on purpose")
		}},
		native.Tool{Name: "badjson", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return json.RawMessage(`{"unterminated": `), nil
		}},
		native.Tool{Name: "huge", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return json.Marshal(map[string]string{"s": strings.Repeat("x", 4*MaxOutputBytes)})
		}},
		native.Tool{Name: "badutf8", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return json.RawMessage("{\"s\":\"a\xffb\xfe\xfdc\"}"), nil // valid JSON to json.Valid, not UTF-8
		}},
		native.Tool{Name: "badutf8-fail", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return nil, errors.New("stray \xff\xfe bytes on stderr")
		}},
		native.Tool{Name: "empty", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, nil }},
		native.Tool{Name: "panic", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) { panic("tool panicked on purpose") }},
		native.Tool{Name: "slow", Func: func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
			var p struct{ MS int }
			if err := json.Unmarshal(in, &p); err != nil {
				return nil, err
			}
			f.Started <- "slow"
			if err := waitCancel(ctx, time.Duration(p.MS)*time.Millisecond); err != nil {
				return nil, err
			}
			return json.Marshal(map[string]int{"slept_ms": p.MS})
		}},
		native.Tool{Name: "block", Func: func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
			f.Started <- "block"
			select {
			case <-f.Release:
				return json.RawMessage(`{"released":true}`), nil
			case <-ctx.Done():
				f.SawCancel.Add(1)
				return nil, ctx.Err()
			}
		}},
		native.Tool{Name: "typed", Func: func(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
			var p struct{ N int }
			if err := json.Unmarshal(in, &p); err != nil {
				return nil, err
			}
			return json.Marshal(map[string]int{"double": 2 * p.N})
		}},
		native.Tool{Name: "list", Func: func(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
			var xs []float64
			if err := json.Unmarshal(in, &xs); err != nil {
				return nil, err
			}
			sum := 0.0
			for _, x := range xs {
				sum += x
			}
			return json.Marshal(map[string]float64{"sum": sum})
		}},
		native.Tool{Name: "sleepy", Func: func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
			if err := waitCancel(ctx, 10*time.Second); err != nil {
				return nil, err
			}
			return json.RawMessage(`{}`), nil
		}},
	)
	f.Native = &ClosingSandbox{Sandbox: native.New(tools...)}
	cat, err := catalog.Open(f.Root)
	if err != nil {
		t.Fatal(err)
	}
	f.Exec, err = executor.New(executor.Config{
		Catalog:        cat,
		Sandboxes:      []sandbox.Sandbox{f.Native},
		MaxOutputBytes: MaxOutputBytes,
		MaxTimeout:     30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Exec.Close() })
	return f
}

// WriteTool writes root/name/tool.json.
func WriteTool(t testing.TB, root, name, manifest string) {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, catalog.ManifestFile), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
}
