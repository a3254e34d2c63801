package executor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/tracing"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
)

// tracedExecutor is newExecutor with an SDK tracer provider whose spans a recorder keeps.
func tracedExecutor(t *testing.T, sampler sdktrace.Sampler, tools ...native.Tool) (*executor.Executor, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sampler))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	return newExecutor(t, executor.Config{TracerProvider: tp, Secrets: map[string]map[string]string{"echo": {"API_KEY": "s3cr3t-planted"}}}, tools...), rec
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, s := range spans {
		names = append(names, s.Name())
	}
	return names
}

func attrOf(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}

func TestTraceSpansOfACall(t *testing.T) {
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	fails := native.Tool{Name: "fails", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, errors.New("kaboom") }}
	tests := []struct {
		name, tool, input string
		traceparent       string
		wantPhases        []string
		wantOutcome       string
	}{
		{"ok, with a remote parent", "echo", `{"marker":"input-planted"}`, parent,
			[]string{executor.SpanCatalog, executor.SpanSelect, executor.SpanRun, executor.SpanTeardown}, "ok"},
		{"ok, a trace of its own", "echo", `{}`, "",
			[]string{executor.SpanCatalog, executor.SpanSelect, executor.SpanRun, executor.SpanTeardown}, "ok"},
		{"the tool fails", "fails", `{}`, parent,
			[]string{executor.SpanCatalog, executor.SpanSelect, executor.SpanRun, executor.SpanTeardown}, "tool_failed"},
		{"no such tool: stops at the catalog", "nope", `{}`, parent,
			[]string{executor.SpanCatalog}, "tool_not_found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, rec := tracedExecutor(t, sdktrace.AlwaysSample(), fails)
			ctx := tracing.Extract(context.Background(), tc.traceparent, "vendor=x")
			res, err := e.Execute(ctx, tc.tool, []byte(tc.input))
			if (err == nil) != (tc.wantOutcome == "ok") {
				t.Fatalf("Execute = %v, %v", res, err)
			}
			spans := rec.Ended()
			if len(spans) != len(tc.wantPhases)+1 {
				t.Fatalf("spans %v, want the phases %v and %s", spanNames(spans), tc.wantPhases, executor.SpanCall)
			}
			call := spans[len(spans)-1]
			if call.Name() != executor.SpanCall {
				t.Fatalf("last span ended = %s, want %s", call.Name(), executor.SpanCall)
			}
			if got := spanNames(spans[:len(spans)-1]); !slices.Equal(got, tc.wantPhases) {
				t.Errorf("phases = %v, want %v", got, tc.wantPhases)
			}
			if tc.traceparent != "" {
				remote := trace.SpanContextFromContext(ctx)
				if call.SpanContext().TraceID() != remote.TraceID() || call.Parent().SpanID() != remote.SpanID() {
					t.Errorf("call span trace %s parent %s, want %s and %s", call.SpanContext().TraceID(), call.Parent().SpanID(), remote.TraceID(), remote.SpanID())
				}
				if call.SpanContext().TraceState().Get("vendor") != "x" {
					t.Errorf("tracestate lost: %q", call.SpanContext().TraceState().String())
				}
			} else if call.Parent().IsValid() {
				t.Errorf("a call without a traceparent has parent %s", call.Parent().SpanID())
			}
			for _, s := range spans[:len(spans)-1] {
				if s.Parent().SpanID() != call.SpanContext().SpanID() || s.SpanContext().TraceID() != call.SpanContext().TraceID() {
					t.Errorf("phase %s is not a child of the call span", s.Name())
				}
			}
			for i := 1; i < len(spans)-1; i++ {
				if spans[i].StartTime().Before(spans[i-1].EndTime()) {
					t.Errorf("phase %s starts before %s ends", spans[i].Name(), spans[i-1].Name())
				}
			}
			if got := attrOf(call, string(executor.AttrOutcome)); got != tc.wantOutcome {
				t.Errorf("outcome = %q, want %q", got, tc.wantOutcome)
			}
			if got := attrOf(call, string(executor.AttrTool)); got != tc.tool {
				t.Errorf("tool = %q", got)
			}
			if tc.wantOutcome == "ok" && (attrOf(call, string(executor.AttrTier)) != "None" || attrOf(call, string(executor.AttrDegraded)) != "false") {
				t.Errorf("tier %q degraded %q", attrOf(call, string(executor.AttrTier)), attrOf(call, string(executor.AttrDegraded)))
			}
			for _, s := range spans {
				for _, a := range s.Attributes() {
					if v := a.Value.String(); strings.Contains(v, "planted") || strings.Contains(v, "kaboom") {
						t.Errorf("span %s attribute %s = %q: input, secret or error text in a span", s.Name(), a.Key, v)
					}
				}
				if strings.Contains(s.Status().Description, "kaboom") {
					t.Errorf("span %s status %q quotes the tool", s.Name(), s.Status().Description)
				}
			}
		})
	}
}

func TestTraceHonoursSampling(t *testing.T) {
	tests := []struct {
		name, traceparent string
		sampler           sdktrace.Sampler
		want              int
	}{
		{"parent not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", sdktrace.ParentBased(sdktrace.AlwaysSample()), 0},
		{"parent sampled, ratio 0 for new traces", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", sdktrace.ParentBased(sdktrace.NeverSample()), 5},
		{"no parent, ratio 0", "", sdktrace.ParentBased(sdktrace.NeverSample()), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, rec := tracedExecutor(t, tc.sampler)
			if _, err := e.Execute(tracing.Extract(context.Background(), tc.traceparent, ""), "echo", []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			if got := len(rec.Ended()); got != tc.want {
				t.Errorf("%d spans (%v), want %d", got, spanNames(rec.Ended()), tc.want)
			}
		})
	}
}

// A sandbox that reports the tool's exit (sandbox.ToolExited) ends the run phase there: what it
// does afterwards is teardown. A native tool stands in for the tier here, sleeping after the
// report as a tier's clean-up would.
func TestTraceTeardownStartsAtToolExit(t *testing.T) {
	const cleanup = 30 * time.Millisecond
	e, rec := tracedExecutor(t, sdktrace.AlwaysSample(), native.Tool{Name: "exits-early", Func: func(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
		sandbox.ToolExited(ctx)
		sandbox.ToolExited(ctx) // a second report changes nothing
		time.Sleep(cleanup)
		return in, nil
	}})
	if _, err := e.Execute(context.Background(), "exits-early", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	dur := map[string]time.Duration{}
	for _, s := range rec.Ended() {
		dur[s.Name()] += s.EndTime().Sub(s.StartTime())
	}
	if dur[executor.SpanTeardown] < cleanup || dur[executor.SpanRun] >= cleanup {
		t.Fatalf("run %s, teardown %s: want the %s after the exit in teardown", dur[executor.SpanRun], dur[executor.SpanTeardown], cleanup)
	}
	if n := len(rec.Ended()); n != 5 {
		t.Fatalf("%d spans (%v), want the call and four phases", n, spanNames(rec.Ended()))
	}
}

// A traced call's log record carries its trace and span ids; an untraced call's has none.
func TestTraceIDsInTheCallLog(t *testing.T) {
	for _, traced := range []bool{true, false} {
		t.Run(fmt.Sprint("traced=", traced), func(t *testing.T) {
			var logs bytes.Buffer
			cfg := executor.Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
			rec := tracetest.NewSpanRecorder()
			if traced {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
				defer tp.Shutdown(context.Background())
				cfg.TracerProvider = tp
			}
			e := newExecutor(t, cfg)
			if _, err := e.Execute(context.Background(), "echo", []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			var line struct {
				TraceID string `json:"trace_id"`
				SpanID  string `json:"span_id"`
			}
			if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
				t.Fatalf("log %q: %v", logs.String(), err)
			}
			if !traced {
				if line.TraceID != "" {
					t.Fatalf("untraced call logged trace_id %q", line.TraceID)
				}
				return
			}
			call := rec.Ended()[len(rec.Ended())-1]
			if line.TraceID != call.SpanContext().TraceID().String() || line.SpanID != call.SpanContext().SpanID().String() {
				t.Fatalf("log %q, call span %s/%s", logs.String(), call.SpanContext().TraceID(), call.SpanContext().SpanID())
			}
		})
	}
}
