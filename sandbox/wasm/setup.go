package wasm

import (
	"context"

	"github.com/axocoatl/isolation/sandbox"
)

// Setup compiles the call's module if it is new (sandbox.Setupper): the executor calls it before
// the call's timeout starts, so a first call is not charged for compiling.
func (s *Sandbox) Setup(ctx context.Context, call sandbox.Call) error { return s.Prepare(ctx, call) }
