package wasm

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/sandbox/wasm/internal/wasmbin"
)

// Tool is a Wasm tool whose module is in memory rather than in a tool folder (Register).
type Tool struct {
	// Name, Description, InputSchema, TimeoutMS and MemoryMB are what tool.json's fields of the
	// same names are, under the same rules (0: the defaults).
	Name        string
	Description string
	InputSchema json.RawMessage
	TimeoutMS   int64
	MemoryMB    int
	// Module is the WebAssembly module: a WASI command or a reactor, as in a tool folder. Register
	// keeps a copy.
	Module []byte
}

type registeredTool struct {
	entry  *catalog.Tool
	module []byte
	hash   [32]byte
}

// Register adds or replaces a tool whose module is in memory: it runs like a tool folder's
// module (compiled on its first call or Prepare, kept in the same bounded cache) and is listed
// by Builtins. It refuses what a tool folder would be refused for (isolation.ErrInvalidToolName,
// isolation.ErrInvalidTool: the manifest rules of catalog.NewBuiltin, a module over 256 MiB or
// one whose sections cannot be read); a module that reads but does not compile fails its calls
// with isolation.ErrInvalidTool, as a folder's does.
func (s *Sandbox) Register(t Tool) error {
	entry, err := catalog.NewBuiltin(t.Name, catalog.Manifest{Runtime: isolation.RequireWasm,
		Description: t.Description, InputSchema: t.InputSchema, TimeoutMS: t.TimeoutMS, MemoryMB: t.MemoryMB})
	if err != nil {
		return err
	}
	invalid := func(format string, args ...any) error {
		return &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: t.Name, Message: fmt.Sprintf(format, args...)}
	}
	if len(t.Module) > maxModuleFile {
		return invalid("module is %d bytes, over the limit of %d", len(t.Module), maxModuleFile)
	}
	if _, err := wasmbin.Inspect(t.Module); err != nil {
		return invalid("module: %v", err)
	}
	r := registeredTool{entry: entry, module: bytes.Clone(t.Module), hash: sha256.Sum256(t.Module)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	s.registered[t.Name] = r
	return nil
}

// Builtins lists the tools registered from memory (sandbox.Builtins).
func (s *Sandbox) Builtins() []*catalog.Tool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*catalog.Tool, 0, len(s.registered))
	for _, r := range s.registered {
		out = append(out, r.entry)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
