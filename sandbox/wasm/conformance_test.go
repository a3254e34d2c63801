package wasm

import (
	"testing"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/sandboxtest"
)

func TestConformance(t *testing.T) {
	mod := guest(t)
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Subject {
		s, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		return sandboxtest.Subject{
			Sandbox: s,
			Answer:  call(mod, map[string]any{"mode": "echo"}, sandbox.Limits{}),
			Hang:    call(mod, map[string]any{"mode": "spin"}, sandbox.Limits{}),
		}
	})
}
