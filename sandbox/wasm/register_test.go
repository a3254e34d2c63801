package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// registeredCall is a call of a tool registered from memory: no folder, no entrypoint.
func registeredCall(name string, input any) sandbox.Call {
	b, err := json.Marshal(input)
	if err != nil {
		panic(err)
	}
	return sandbox.Call{ID: "test", Tool: name, Runtime: isolation.RequireWasm, Input: b, Limits: sandbox.Limits{}.WithDefaults()}
}

func TestRegisteredModuleRuns(t *testing.T) {
	bin, err := os.ReadFile(guest(t))
	if err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t, Config{})
	mod := append([]byte(nil), bin...)
	if err := s.Register(Tool{Name: "greet", Description: "greets", TimeoutMS: 5000, MemoryMB: 32, Module: mod,
		InputSchema: json.RawMessage(`{"type":"object","properties":{"name":{"type":"string"}}}`)}); err != nil {
		t.Fatal(err)
	}
	// Register keeps a copy: what the caller does with its slice afterwards changes nothing.
	clear(mod)
	out, err := s.Run(context.Background(), registeredCall("greet", map[string]any{"name": "mem"}))
	if err != nil {
		t.Fatal(err)
	}
	wantJSON(t, out, "greeting", "Hello, mem!")
	bs := s.Builtins()
	if len(bs) != 1 || bs[0].Name != "greet" || bs[0].Runtime != isolation.RequireWasm || bs[0].Description != "greets" ||
		bs[0].TimeoutMS != 5000 || bs[0].MemoryMB != 32 || bs[0].ValidateInput([]byte(`{"name":1}`)) == nil {
		t.Fatalf("Builtins = %+v", bs)
	}
	// The same content registered under a second name shares the compiled module.
	if err := s.Register(Tool{Name: "greet2", Module: bin}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(context.Background(), registeredCall("greet2", map[string]any{"name": "x"})); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	n := len(s.modules)
	s.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d compiled modules for one content, want 1", n)
	}
	if _, err := s.Run(context.Background(), registeredCall("nope", map[string]any{})); !errors.Is(err, isolation.ErrToolNotFound) {
		t.Fatalf("unregistered name: %v, want ErrToolNotFound", err)
	}
}

func TestRegisterRefuses(t *testing.T) {
	s := newSandbox(t, Config{})
	ok := handModule(1, 0x01)
	for _, tc := range []struct {
		name string
		tool Tool
		want error
	}{
		{"bad name", Tool{Name: "../x", Module: ok}, isolation.ErrInvalidToolName},
		{"upper-case name", Tool{Name: "Greet", Module: ok}, isolation.ErrInvalidToolName},
		{"no module", Tool{Name: "t"}, isolation.ErrInvalidTool},
		{"garbage", Tool{Name: "t", Module: []byte("not wasm at all")}, isolation.ErrInvalidTool},
		{"truncated", Tool{Name: "t", Module: ok[:len(ok)-3]}, isolation.ErrInvalidTool},
		{"timeout out of range", Tool{Name: "t", Module: ok, TimeoutMS: -1}, isolation.ErrInvalidTool},
		{"memory out of range", Tool{Name: "t", Module: ok, MemoryMB: 1 << 21}, isolation.ErrInvalidTool},
		{"schema with a remote $ref", Tool{Name: "t", Module: ok, InputSchema: json.RawMessage(`{"$ref":"https://example.com/s.json"}`)}, isolation.ErrInvalidTool},
		{"schema cycle", Tool{Name: "t", Module: ok, InputSchema: json.RawMessage(`{"$ref":"#"}`)}, isolation.ErrInvalidTool},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Register(tc.tool); !errors.Is(err, tc.want) {
				t.Fatalf("Register = %v, want %v", err, tc.want)
			}
		})
	}
	if n := len(s.Builtins()); n != 0 {
		t.Fatalf("%d tools registered by refused calls", n)
	}
	// A module whose sections read but that does not validate fails its calls as a folder's does.
	if err := s.Register(Tool{Name: "broken", Module: brokenModule}); err != nil {
		t.Fatal(err)
	}
	c := registeredCall("broken", map[string]any{})
	for _, run := range []func() error{
		func() error { return s.Prepare(context.Background(), c) },
		func() error { _, err := s.Run(context.Background(), c); return err },
	} {
		if err := run(); !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), `"broken"`) {
			t.Fatalf("got %v, want ErrInvalidTool naming the tool", err)
		}
	}
	s.Close()
	if err := s.Register(Tool{Name: "late", Module: ok}); err == nil {
		t.Fatal("Register after Close succeeded")
	}
}
