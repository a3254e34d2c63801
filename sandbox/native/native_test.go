package native_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox/native"
)

func echo(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }

// TestRegisterValidates: a tool Register accepted with a bad name or schema used to fail later,
// on the list or call path (a panic in catalog.Builtin); it is refused at Register.
func TestRegisterValidates(t *testing.T) {
	for _, tt := range []struct {
		tool native.Tool
		kind error
	}{
		{native.Tool{Name: "Bad Name", Func: echo}, isolation.ErrInvalidToolName},
		{native.Tool{Name: "../x", Func: echo}, isolation.ErrInvalidToolName},
		{native.Tool{Name: "", Func: echo}, isolation.ErrInvalidToolName},
		{native.Tool{Name: "s", Func: echo, InputSchema: json.RawMessage(`{"type":5}`)}, isolation.ErrInvalidTool},
		{native.Tool{Name: "s", Func: echo, InputSchema: json.RawMessage(`{"$ref":"#"}`)}, isolation.ErrInvalidTool},
		{native.Tool{Name: "s", Func: echo, InputSchema: json.RawMessage(`{"type":`)}, isolation.ErrInvalidTool},
		{native.Tool{Name: "nofunc"}, isolation.ErrInvalidTool},
	} {
		s := native.New()
		if err := s.Register(tt.tool); !errors.Is(err, tt.kind) {
			t.Errorf("Register(%q, %s) = %v, want %v", tt.tool.Name, tt.tool.InputSchema, err, tt.kind)
		}
		if len(s.Builtins()) != 0 {
			t.Errorf("Register(%q) failed but the tool is listed", tt.tool.Name)
		}
	}
	s := native.New()
	if err := s.Register(native.Tool{Name: "ok", Func: echo, InputSchema: json.RawMessage(`{"type":"object"}`)}); err != nil {
		t.Fatal(err)
	}
	if b := s.Builtins(); len(b) != 1 || b[0].Name != "ok" {
		t.Fatalf("Builtins = %+v", b)
	}
	defer func() {
		if recover() == nil {
			t.Error("New with an invalid tool did not panic")
		}
	}()
	native.New(native.Tool{Name: "Bad"})
}
