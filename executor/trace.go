package executor

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/tracing"
	"github.com/axocoatl/isolation/sandbox"
)

// Span names: a call's span and one child per phase, in this order (a call that fails stops at
// the phase that failed; a call a Remote runs has the phase "axoiso.remote" after the catalog).
const (
	SpanCall     = "axoiso.call"
	SpanCatalog  = "axoiso.catalog"  // the tool looked up, its input checked against its schema
	SpanSelect   = "axoiso.select"   // the tier chosen (probes, fallback)
	SpanSetup    = "axoiso.setup"    // the tier's per-tool work before the tool's clock starts
	SpanRun      = "axoiso.run"      // the tool running, from the sandbox's start to the tool's exit
	SpanTeardown = "axoiso.teardown" // after the exit: the tier's clean-up the call waits for, the output checks
	SpanRemote   = "axoiso.remote"   // a call handed to another host (package fleet)
)

// Span attributes. Nothing of a call's input, output, environment, secrets, stdout or stderr is
// ever an attribute, nor an error's message (which may quote the tool): the error class is.
const (
	AttrTool     = attribute.Key("gen_ai.tool.name")    // OpenTelemetry's GenAI convention
	AttrCallID   = attribute.Key("gen_ai.tool.call.id") // the call id of the result and logs
	AttrTier     = attribute.Key("axoiso.tier")
	AttrIdeal    = attribute.Key("axoiso.ideal_tier")
	AttrDegraded = attribute.Key("axoiso.degraded") // a downgrade: Tier isolates less than Ideal
	AttrBackend  = attribute.Key("axoiso.backend")
	AttrOutcome  = attribute.Key("axoiso.outcome") // "ok" or the error's kind (timeout, tool_failed, ...)
	AttrErrType  = attribute.Key("error.type")     // the error's kind, on failed calls
)

// callTrace is one call's spans. A nil *callTrace (tracing off) does nothing: every method
// checks, so the call path pays a nil comparison per phase and nothing else.
type callTrace struct {
	tracer trace.Tracer
	ctx    context.Context // the call span's context: phases are its children

	mu       sync.Mutex // protects phase and name: a tier may report the tool's exit from its goroutine
	call     trace.Span
	phase    trace.Span
	name     string
	finished bool
}

// startTrace starts the call's span, a child of ctx's span (a remote traceparent included), or
// returns nil when the executor has no tracer provider or the call is not sampled.
func (e *Executor) startTrace(ctx context.Context, callID, tool string) (context.Context, *callTrace) {
	if e.tracer == nil {
		return ctx, nil
	}
	ctx, span := e.tracer.Start(ctx, SpanCall, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(AttrTool.String(tool), AttrCallID.String(callID)))
	if !span.IsRecording() {
		span.End()
		return ctx, nil
	}
	return ctx, &callTrace{tracer: e.tracer, ctx: ctx, call: span}
}

// begin ends the current phase and starts the phase name; the returned context carries the
// phase's span (and, for SpanRun, the hook that lets the sandbox say the tool has exited).
func (t *callTrace) begin(ctx context.Context, name string) context.Context {
	if t == nil {
		return ctx
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.switchLocked(name)
	ctx = trace.ContextWithSpan(ctx, t.phase)
	if name == SpanRun {
		ctx = sandbox.WithExitHook(ctx, t.toolExited)
	}
	return ctx
}

func (t *callTrace) switchLocked(name string) {
	if t.phase != nil {
		t.phase.End()
	}
	_, t.phase = t.tracer.Start(t.ctx, name)
	t.name = name
}

// toolExited is the sandbox's report that the tool has exited: the run phase ends there and
// teardown begins. Later reports (a tier's clean-up off the call path) change nothing.
func (t *callTrace) toolExited() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.name == SpanRun && !t.finished {
		t.switchLocked(SpanTeardown)
	}
}

// ran is called when the sandbox's Run returned: teardown begins unless the sandbox said so.
func (t *callTrace) ran() {
	if t == nil {
		return
	}
	t.toolExited()
}

// selected records the tier the call runs in on the call's span.
func (t *callTrace) selected(sel isolation.Selection) {
	if t == nil {
		return
	}
	t.call.SetAttributes(AttrTier.String(sel.Tier.String()), AttrIdeal.String(sel.Ideal.String()), AttrDegraded.Bool(sel.Degraded))
}

// end ends the last phase and the call's span with the call's outcome.
func (t *callTrace) end(res *Result, err error) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finished = true
	if err != nil {
		kind := isolation.KindName(err)
		t.phase.SetStatus(codes.Error, kind)
		t.call.SetAttributes(AttrOutcome.String(kind), AttrErrType.String(kind))
		var ie *isolation.Error
		if errors.As(err, &ie) && ie.HasTier {
			t.call.SetAttributes(AttrTier.String(ie.Tier.String()))
		}
		t.call.SetStatus(codes.Error, kind)
	} else {
		attrs := []attribute.KeyValue{AttrOutcome.String("ok"), AttrTier.String(res.Tier.String()),
			AttrIdeal.String(res.Ideal.String()), AttrDegraded.Bool(res.Degraded)}
		if res.Backend != "" {
			attrs = append(attrs, AttrBackend.String(res.Backend))
		}
		t.call.SetAttributes(attrs...)
	}
	if t.phase != nil {
		t.phase.End()
	}
	t.call.End()
}

// logAttrs are the call's trace and span ids for its log record, so that a log line leads to its
// trace (none when the call is not traced).
func (t *callTrace) logAttrs() []slog.Attr {
	if t == nil {
		return nil
	}
	sc := t.call.SpanContext()
	return []slog.Attr{slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String())}
}

// newTracer is the executor's tracer, nil without a provider.
func newTracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(tracing.ScopeName)
}
