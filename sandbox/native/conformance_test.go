package native_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/sandboxtest"
)

func TestConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Subject {
		s := native.New(
			native.Tool{Name: "answer", Func: func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }},
			native.Tool{Name: "hang", Func: func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}},
		)
		call := func(tool string) sandbox.Call {
			return sandbox.Call{ID: "conformance", Tool: tool, Runtime: isolation.RequireNativeTrusted, Input: []byte(`{}`), Limits: sandbox.Limits{}.WithDefaults()}
		}
		return sandboxtest.Subject{Sandbox: s, Answer: call("answer"), Hang: call("hang")}
	})
}
