package mcpserver

import (
	"context"
	"net/http"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.opentelemetry.io/otel/trace"
)

// A tools/call's params._meta trace context wins over the /mcp request's headers (it travels
// with the call on every transport); without either, the call has none.
func TestTraceContextSources(t *testing.T) {
	const (
		metaTP   = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		headerTP = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"
	)
	tests := []struct {
		name   string
		meta   mcp.Meta
		header http.Header
		want   string // trace id, "" for none
	}{
		{"meta", mcp.Meta{"traceparent": metaTP, "tracestate": "a=1"}, nil, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"header", nil, http.Header{"Traceparent": {headerTP}}, "5bf92f3577b34da6a3ce929d0e0e4736"},
		{"meta wins", mcp.Meta{"traceparent": metaTP}, http.Header{"Traceparent": {headerTP}}, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"meta not a string", mcp.Meta{"traceparent": 42}, http.Header{"Traceparent": {headerTP}}, "5bf92f3577b34da6a3ce929d0e0e4736"},
		{"malformed", mcp.Meta{"traceparent": "00-xyz"}, nil, ""},
		{"none (stdio)", nil, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &mcp.CallToolRequest{Params: &mcp.CallToolParamsRaw{Meta: tc.meta, Name: "echo"}}
			if tc.header != nil {
				req.Extra = &mcp.RequestExtra{Header: tc.header}
			}
			sc := trace.SpanContextFromContext(traceContext(context.Background(), req))
			got := ""
			if sc.IsValid() {
				got = sc.TraceID().String()
			}
			if got != tc.want {
				t.Fatalf("trace id %q, want %q", got, tc.want)
			}
		})
	}
}
