package wasm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// FuzzRegister feeds module bytes through what a tool's module meets before and during its first
// call: Register's checks, the rewriter (data segments merged, loops instrumented, the reactor
// test), wazero's compiler and one run. Whatever the bytes, the result is a module that runs or a
// typed error (invalid_tool, or the tool's own failure), never a panic or a hang.
func FuzzRegister(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 'a', 's', 'm', 1, 0, 0, 0},
		nopModule,
		brokenModule,
		handModule(1, 0x00),
		handModule(2, 0x03, 0x40, 0x0c, 0x00, 0x0b), // loop { br 0 }: a runaway guest
		[]byte("not wasm"),
	} {
		f.Add(seed)
	}
	s := newSandbox(f, Config{})
	f.Fuzz(func(t *testing.T, mod []byte) {
		err := s.Register(Tool{Name: "f", Module: mod, TimeoutMS: 100})
		if err != nil {
			if !errors.Is(err, isolation.ErrInvalidTool) {
				t.Fatalf("Register: untyped error %v", err)
			}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := registeredCall("f", map[string]any{})
		c.Limits = sandbox.Limits{Timeout: 100 * time.Millisecond, MemoryMB: 16}.WithDefaults()
		if err := s.Prepare(ctx, c); err != nil {
			if !errors.Is(err, isolation.ErrInvalidTool) {
				t.Fatalf("Prepare: %v, want nil or invalid_tool", err)
			}
			return
		}
		if _, err := s.Run(ctx, c); err != nil && !errors.Is(err, isolation.ErrInvalidTool) &&
			!errors.Is(err, isolation.ErrTimeout) && !errors.Is(err, isolation.ErrMemoryLimit) && !errors.Is(err, isolation.ErrToolFailed) {
			t.Fatalf("Run: %v", err)
		}
	})
}
