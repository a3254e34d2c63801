package wasm

import (
	"context"
	"math"
	"testing"

	"github.com/axocoatl/isolation/sandbox"
)

// A memory limit too large to convert to bytes (a library caller's Limits, not through the
// executor's ceilings) is all a 32-bit memory can address: the call runs, and the limit did not
// wrap to 0 bytes (which refuses even the module's initial memory).
func TestHugeMemoryLimitDoesNotWrap(t *testing.T) {
	mod := guest(t)
	s := newSandbox(t, Config{})
	if err := s.Prepare(context.Background(), call(mod, nil, sandbox.Limits{})); err != nil {
		t.Fatal(err) // compiling is not the calls' time
	}
	for _, mb := range []int{17592186044416, 8796093022208, math.MaxInt} {
		c := call(mod, map[string]any{"name": "x"}, sandbox.Limits{})
		c.Limits.MemoryMB = mb // after WithDefaults: the tier's own bound is what is tested
		out, err := s.Run(context.Background(), c)
		if err != nil {
			t.Fatalf("memory_mb %d: %v", mb, err)
		}
		wantJSON(t, out, "greeting", "Hello, x!")
	}
}
