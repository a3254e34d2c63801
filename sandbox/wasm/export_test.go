package wasm

import (
	"context"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// module returns the compiled module of the file at path (compiling it if needed), without
// keeping a reference: for tests that inspect how a module was prepared.
func (s *Sandbox) module(ctx context.Context, path string) (*module, error) {
	m, err := s.acquire(ctx, sandbox.Call{Tool: "test", Runtime: isolation.RequireWasm, Entrypoint: path})
	if err != nil {
		return nil, err
	}
	s.release(m)
	return m, nil
}
