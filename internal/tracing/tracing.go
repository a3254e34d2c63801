// Package tracing carries the W3C trace context (traceparent, tracestate) between the carriers a
// call arrives on (HTTP headers, MCP _meta, fleet message headers) and a context.Context. Which
// spans a call has is the executor's business (package executor); the exporter is package otlp.
package tracing

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of every span axoiso emits.
const ScopeName = "github.com/axocoatl/isolation"

// W3C is the W3C Trace Context propagator (traceparent and tracestate; no baggage: a call's
// baggage could carry anything, and nothing here reads it).
var W3C propagation.TraceContext

// Extract returns ctx carrying the remote span context of a traceparent (and tracestate) header
// value; ctx unchanged when traceparent is empty or malformed (the call then starts a trace of
// its own, as the W3C recommendation says).
func Extract(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return W3C.Extract(ctx, &headerPair{traceparent: traceparent, tracestate: tracestate})
}

// Inject returns the traceparent and tracestate of ctx's span ("" when it has none).
func Inject(ctx context.Context) (traceparent, tracestate string) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return "", ""
	}
	var h headerPair
	W3C.Inject(ctx, &h)
	return h.traceparent, h.tracestate
}

// headerPair is a propagation.TextMapCarrier of the two W3C keys only.
type headerPair struct{ traceparent, tracestate string }

func (h *headerPair) Get(key string) string {
	switch key {
	case "traceparent":
		return h.traceparent
	case "tracestate":
		return h.tracestate
	}
	return ""
}

func (h *headerPair) Set(key, value string) {
	switch key {
	case "traceparent":
		h.traceparent = value
	case "tracestate":
		h.tracestate = value
	}
}

func (h *headerPair) Keys() []string { return []string{"traceparent", "tracestate"} }
