// Package native is the None tier: trusted tools that are Go functions registered in this process.
// It isolates nothing; it exists for built-ins the platform itself trusts.
package native

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
	"sync"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/internal/callio"
	"github.com/axocoatl/isolation/sandbox"
)

// The optional interface of package sandbox this tier has.
var _ sandbox.Builtins = (*Sandbox)(nil)

// Func is a trusted tool. It must honour ctx: the sandbox returns at the deadline, but cannot stop
// a function that ignores it.
type Func func(ctx context.Context, input json.RawMessage) (json.RawMessage, error)

// Tool is one registered function.
type Tool struct {
	Name        string
	Description string
	InputSchema json.RawMessage
	Func        Func
}

// Sandbox runs registered functions. Safe for concurrent use; Close is idempotent.
type Sandbox struct {
	mu    sync.RWMutex // protects tools
	tools map[string]registered

	lifecycle sync.Mutex     // protects closed and the Add side of calls
	closed    bool           // set by Close; Run fails from then on
	calls     sync.WaitGroup // calls in flight; Close waits for them
}

// registered is a Tool and its catalog entry (checked, its schema compiled, at Register).
type registered struct {
	Tool
	entry *catalog.Tool
}

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("native: sandbox closed")

// New returns a sandbox with the given tools registered. It panics on a tool Register refuses:
// its callers pass tools fixed at build time.
func New(tools ...Tool) *Sandbox {
	s := &Sandbox{tools: map[string]registered{}}
	for _, t := range tools {
		s.MustRegister(t)
	}
	return s
}

// NewWithBuiltins returns a sandbox with the built-in tools registered ("echo", "json-stats").
func NewWithBuiltins() *Sandbox { return New(Builtin()...) }

// Register adds or replaces a tool. It refuses (isolation.ErrInvalidToolName,
// isolation.ErrInvalidTool) a name that is not a valid tool name, an input schema the catalog
// would refuse, or a nil Func: each would otherwise fail later, on the list or call path.
func (s *Sandbox) Register(t Tool) error {
	if err := catalog.ValidateName(t.Name); err != nil {
		return err
	}
	if t.Func == nil {
		return &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: t.Name, Message: "no Func"}
	}
	entry, err := catalog.NewBuiltin(t.Name, catalog.Manifest{Runtime: isolation.RequireNativeTrusted, Description: t.Description, InputSchema: t.InputSchema})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.tools[t.Name] = registered{Tool: t, entry: entry}
	s.mu.Unlock()
	return nil
}

// MustRegister is Register for tools fixed at build time: it panics on a refused tool.
func (s *Sandbox) MustRegister(t Tool) {
	if err := s.Register(t); err != nil {
		panic("native: " + err.Error())
	}
}

func (s *Sandbox) Tier() isolation.Tier { return isolation.TierNone }

func (s *Sandbox) Probe(context.Context) isolation.Availability {
	return isolation.Availability{Available: true, Backend: "in-process"}
}

func (s *Sandbox) Supports(req isolation.RuntimeRequirement) string {
	if req != isolation.RequireNativeTrusted {
		return "the in-process tier runs only registered Go functions (NativeTrusted)"
	}
	return ""
}

// Builtins lists the registered tools (sandbox.Builtins).
func (s *Sandbox) Builtins() []*catalog.Tool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*catalog.Tool, 0, len(s.tools))
	for _, t := range s.tools {
		out = append(out, t.entry)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Run calls the function registered under call.Tool. A returned error or a panic is a failed tool
// (exit code 1, the message as stderr).
func (s *Sandbox) Run(ctx context.Context, call sandbox.Call) (sandbox.Outcome, error) {
	s.lifecycle.Lock()
	if s.closed {
		s.lifecycle.Unlock()
		return sandbox.Outcome{}, ErrClosed
	}
	s.calls.Add(1)
	s.lifecycle.Unlock()
	defer s.calls.Done()
	if err := ctx.Err(); err != nil {
		return sandbox.Outcome{}, sandbox.ContextError(ctx)
	}
	s.mu.RLock()
	t, ok := s.tools[call.Tool]
	s.mu.RUnlock()
	if !ok {
		return sandbox.Outcome{}, isolation.Errorf(isolation.ErrToolNotFound, "no in-process function is registered as %q", call.Tool)
	}
	type result struct {
		out json.RawMessage
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("panic: %v\n%s", p, debug.Stack())}
			}
		}()
		out, err := t.Func(ctx, call.Input)
		done <- result{out, err}
	}()
	select {
	case <-ctx.Done():
		return sandbox.Outcome{}, sandbox.ContextError(ctx)
	case r := <-done:
		sandbox.ToolExited(ctx)
		if ctx.Err() != nil {
			// The function saw the context end and returned (often ctx.Err() itself): when both
			// are ready select picks either, and the call's end must not depend on that draw.
			return sandbox.Outcome{}, sandbox.ContextError(ctx)
		}
		o := sandbox.Outcome{Backend: "in-process"}
		if r.err != nil {
			tail := callio.NewTailBuffer(call.Limits.MaxStderrBytes)
			tail.Write([]byte(r.err.Error()))
			o.ExitCode, o.Stderr = 1, tail.String()
			return o, nil
		}
		if r.out == nil {
			r.out = json.RawMessage{}
		}
		o.Output = r.out
		return o, nil
	}
}

// Close makes later calls fail and waits for the calls in flight to return. A function that
// ignores its context is waited for only until that call's own deadline has passed: Run returns
// then, and the function's goroutine is the function's business. Idempotent.
func (s *Sandbox) Close() error {
	s.lifecycle.Lock()
	s.closed = true
	s.lifecycle.Unlock()
	s.calls.Wait()
	return nil
}
