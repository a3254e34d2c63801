package wasm

import (
	"testing"
	"time"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/sandboxtest"
)

func TestConformance(t *testing.T) {
	mod := guest(t)
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Subject {
		// A long queue deadline: the contract tested is not the queue's bounds (TestQueue), and
		// on a loaded host (or under -race) a call takes long.
		s, err := New(Config{QueueTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return sandboxtest.Subject{
			Sandbox: s,
			Answer:  call(mod, map[string]any{"mode": "echo"}, sandbox.Limits{}),
			Hang:    call(mod, map[string]any{"mode": "spin"}, sandbox.Limits{}),
			Print:   call(mod, map[string]any{"mode": "print"}, sandbox.Limits{}),
		}
	})
}
