package axoiso

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

// emptyModule is the smallest valid WebAssembly module.
var emptyModule = []byte{0, 'a', 's', 'm', 1, 0, 0, 0}

// testConfig keeps every directory of a config in the test's temp dirs (the tools root: set it).
func testConfig(t *testing.T) Config {
	c := Config{CacheDir: t.TempDir(), DataDir: t.TempDir()}
	c.Oci.StateRoot = t.TempDir()
	c.VM.RunDir = t.TempDir()
	t.Setenv(EnvTools, "")
	return c
}

func okFunc(context.Context, json.RawMessage) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

func TestRegisteredTools(t *testing.T) {
	c := testConfig(t)
	c.NativeTools = []native.Tool{{Name: "f", Func: okFunc}}
	c.WasmTools = []wasm.Tool{{Name: "w", Module: emptyModule, Description: "in memory"}}
	if _, err := New(Config{ToolsRoot: filepath.Join(t.TempDir(), "missing"), NativeTools: c.NativeTools}); err == nil {
		t.Fatal("New with a tools root given that does not exist succeeded")
	}
	// No root given and the default one missing: with registered tools that is no error.
	c.ToolsRoot = ""
	c.Oci.BundleRoot = ""
	e, err := newWithDefaultRoot(c, filepath.Join(t.TempDir(), "missing"))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Catalog() != nil {
		t.Fatalf("catalog %v, want none", e.Catalog().Root())
	}
	tools, errs := e.Tools()
	var names []string
	for _, tl := range tools {
		names = append(names, tl.Name+":"+tl.Runtime.String())
	}
	if got := strings.Join(names, " "); got != "echo:NativeTrusted f:NativeTrusted json-stats:NativeTrusted w:WasmCompiled" || errs != nil {
		t.Fatalf("Tools = %s, %v", got, errs)
	}
	if res, err := e.Execute(context.Background(), "f", []byte(`{}`)); err != nil || string(res.Output) != `{}` {
		t.Fatalf("Execute(f) = %+v, %v", res, err)
	}
	// The empty module has no _start: a tool that exits without output.
	if _, err := e.Execute(context.Background(), "w", []byte(`{}`)); err == nil {
		t.Fatal("the empty module produced an output")
	}
	if _, err := e.Execute(context.Background(), "nope", []byte(`{}`)); !errors.Is(err, isolation.ErrToolNotFound) {
		t.Fatalf("Execute(nope) = %v, want ErrToolNotFound", err)
	}
}

func TestRegisteredToolsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   error // nil: any error
	}{
		{"native twice", func(c *Config) {
			c.NativeTools = []native.Tool{{Name: "f", Func: okFunc}, {Name: "f", Func: okFunc}}
		}, isolation.ErrInvalidTool},
		{"a built-in's name", func(c *Config) { c.NativeTools = []native.Tool{{Name: "echo", Func: okFunc}} }, isolation.ErrInvalidTool},
		{"native and wasm of one name", func(c *Config) {
			c.NativeTools = []native.Tool{{Name: "x", Func: okFunc}}
			c.WasmTools = []wasm.Tool{{Name: "x", Module: emptyModule}}
		}, isolation.ErrInvalidTool},
		{"bad native name", func(c *Config) { c.NativeTools = []native.Tool{{Name: "Bad", Func: okFunc}} }, isolation.ErrInvalidToolName},
		{"no func", func(c *Config) { c.NativeTools = []native.Tool{{Name: "f"}} }, isolation.ErrInvalidTool},
		{"not wasm", func(c *Config) { c.WasmTools = []wasm.Tool{{Name: "w", Module: []byte("#!/bin/sh")}} }, isolation.ErrInvalidTool},
		{"wasm tier disabled", func(c *Config) {
			c.WasmTools = []wasm.Tool{{Name: "w", Module: emptyModule}}
			c.DisableTiers = []string{"Wasmtime"}
		}, nil},
		{"none tier disabled", func(c *Config) {
			c.NativeTools = []native.Tool{{Name: "f", Func: okFunc}}
			c.DisableTiers = []string{"None"}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			c.ToolsRoot = t.TempDir()
			tc.change(&c)
			e, err := New(c)
			if err == nil {
				e.Close()
				t.Fatal("New succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("New = %v, want %v", err, tc.want)
			}
		})
	}
}

// newWithDefaultRoot is New with root as the default tools root.
func newWithDefaultRoot(c Config, root string) (*executor.Executor, error) {
	old := defaultToolsRoot
	defaultToolsRoot = root
	defer func() { defaultToolsRoot = old }()
	return New(c)
}
