// Package axoiso builds an executor with every tier this build knows from one Config, the way the
// axoiso command does: the entry point for a Go program that runs tools (an agent daemon). The
// isolating tiers are set up on first use, so a program that only runs Wasm tools never sets up
// containers or VMs. Tools come from a tools root (Config.ToolsRoot) and from memory
// (Config.WasmTools: a module's bytes; Config.NativeTools: Go functions). LoadConfig reads the
// config file the axoiso command reads. To serve the executor over HTTP and MCP, see package
// server.
package axoiso

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/tracing/otlp"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

// New builds an executor from c (defaults filled in by WithDefaults): the None tier with the
// built-ins and c.NativeTools, and the Wasmtime, Oci and Firecracker tiers unless disabled, each
// set up on its first use (the Wasmtime tier at once when c.WasmTools registers tools in it).
// The tools root must exist (see Config.WasmTools for the exception). The caller closes the
// executor: Close waits for the calls in flight and removes every container and VM it made.
//
// Before anything else New reaps, in every tier whether or not this process will use it, what
// processes that died without closing their sandboxes left under c's directories (containers,
// VMs, their processes, cgroups, mounts, state and run dirs) and their keepers could not reap.
// When there is nothing to reap this costs a few system calls per tier.
func New(c Config) (*executor.Executor, error) {
	rootGiven := c.ToolsRoot != "" || c.Oci.BundleRoot != "" || os.Getenv(EnvTools) != ""
	registers := len(c.NativeTools)+len(c.WasmTools) > 0
	c = c.WithDefaults()
	var cat *catalog.Catalog
	if _, err := os.Stat(c.ToolsRoot); err == nil || rootGiven || !registers {
		if cat, err = catalog.Open(c.ToolsRoot); err != nil {
			return nil, fmt.Errorf("%w (set --tools, %s or tools_root in the config)", err, EnvTools)
		}
	}
	if err := c.isolationChoice(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	secrets, err := c.secretValues()
	if err != nil {
		return nil, err
	}
	if _, err := c.Wasm.HTTP.rootCAs(); err != nil { // checked now: the Wasm tier is built on first use
		return nil, err
	}
	sbs, err := sandboxes(c)
	if err != nil {
		return nil, err
	}
	grants, err := egressGrants(c)
	if err != nil {
		closeAll(sbs)
		return nil, err
	}
	tp, afterClose, err := tracerProvider(c)
	if err != nil {
		closeAll(sbs)
		return nil, err
	}
	e, err := executor.New(executor.Config{
		TracerProvider: tp,
		AfterClose:     afterClose,
		Egress:         grants,
		Secrets:        secrets,
		Catalog:        cat,
		Sandboxes:      sbs,
		Strict:         c.Strict,
		MaxOutputBytes: c.MaxOutputBytes,
		DefaultTimeout: time.Duration(c.DefaultTimeout),
		MaxTimeout:     time.Duration(c.MaxTimeout),
		MaxMemoryMB:    c.MaxMemoryMB,
		Isolation:      c.Isolation,
		ToolIsolation:  c.ToolIsolation,
		Logger:         c.Logger,
	})
	if err != nil {
		closeAll(sbs)
		if afterClose != nil {
			afterClose()
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return e, nil
}

// tracerProvider is c.TracerProvider (the caller's to shut down), or the one c.Tracing asks for
// with its shutdown, or nil: tracing off.
func tracerProvider(c Config) (trace.TracerProvider, func() error, error) {
	if c.TracerProvider != nil {
		return c.TracerProvider, nil, nil
	}
	return c.Tracing.TracerProvider(c.Logger)
}

// TracerProvider builds the tracer provider t asks for (nil when tracing is off) and its
// shutdown, which flushes the spans still buffered (at most 5 s). Several executors of one
// process may share it through Config.TracerProvider; log receives export failures.
func (t TracingConfig) TracerProvider(log *slog.Logger) (trace.TracerProvider, func() error, error) {
	if t.OTLPEndpoint == "" {
		return nil, nil, nil
	}
	if err := t.check(); err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	tp, err := otlp.NewProvider(context.Background(), t.exporter(log))
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	return tp, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), tracingFlushTimeout)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			return fmt.Errorf("tracing: flushing spans to %s: %w", t.OTLPEndpoint, err)
		}
		return nil
	}, nil
}

// tracingFlushTimeout bounds Close's wait for the OTLP receiver.
const tracingFlushTimeout = 5 * time.Second

// Tiers probes every tier as New would set it up from c, without a tools root: what `axoiso
// tiers` prints. A disabled tier is unavailable and says so.
func Tiers(ctx context.Context, c Config) []executor.TierStatus {
	c.NativeTools, c.WasmTools = nil, nil
	sbs, _ := sandboxes(c) // without tools to register, nothing fails
	defer closeAll(sbs)
	out := make([]executor.TierStatus, 0, len(isolation.Tiers()))
	for _, t := range isolation.Tiers() {
		st := executor.TierStatus{Tier: t, Availability: isolation.Availability{Reason: "disabled in the config or not built into this binary", Fix: "remove it from disable_tiers"}}
		for _, s := range sbs {
			if s.Tier() == t {
				st.Availability = s.Probe(ctx)
			}
		}
		out = append(out, st)
	}
	return out
}

// sandboxes returns one sandbox per tier that is not disabled, with c's tools registered, after
// reaping what dead owners left (see New). The caller closes them.
func sandboxes(c Config) ([]sandbox.Sandbox, error) {
	c = c.WithDefaults()
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, b := range tierBuilders {
		if b.reap != nil {
			b.reap(c, log)
		}
	}
	disabled := map[string]bool{}
	for _, t := range c.DisableTiers {
		disabled[t] = true
	}
	var sbs []sandbox.Sandbox
	fail := func(err error) ([]sandbox.Sandbox, error) {
		closeAll(sbs)
		return nil, err
	}
	// Every name once, across both tiers and the built-ins: which one would run is otherwise
	// a matter of registration order.
	names := map[string]bool{}
	twice := func(name string) error {
		if names[name] {
			return &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: name, Message: "registered twice (the built-ins echo and json-stats included)"}
		}
		names[name] = true
		return nil
	}
	nat := native.NewWithBuiltins()
	for _, t := range nat.Builtins() {
		names[t.Name] = true
	}
	for _, t := range c.NativeTools {
		if err := twice(t.Name); err != nil {
			return fail(err)
		}
		if err := nat.Register(t); err != nil {
			return fail(err)
		}
	}
	if disabled[isolation.TierNone.String()] {
		if len(c.NativeTools) > 0 {
			return fail(fmt.Errorf("config: NativeTools registered with the None tier in disable_tiers"))
		}
		nat.Close()
	} else {
		sbs = append(sbs, nat)
	}
	for _, b := range tierBuilders {
		if disabled[b.tier.String()] {
			if b.tier == isolation.TierWasm && len(c.WasmTools) > 0 {
				return fail(fmt.Errorf("config: WasmTools registered with the Wasmtime tier in disable_tiers"))
			}
			continue
		}
		if b.tier == isolation.TierWasm && len(c.WasmTools) > 0 {
			s, err := b.build(c, log)
			if err != nil {
				return fail(err)
			}
			sbs = append(sbs, s)
			ws := s.(*wasm.Sandbox)
			for _, t := range c.WasmTools {
				if err := twice(t.Name); err != nil {
					return fail(err)
				}
				if err := ws.Register(t); err != nil {
					return fail(err)
				}
			}
			continue
		}
		sbs = append(sbs, &lazyTier{tier: b.tier, build: func() (sandbox.Sandbox, error) { return b.build(c, log) }, log: log})
	}
	return sbs, nil
}

func closeAll(sbs []sandbox.Sandbox) {
	for _, s := range sbs {
		s.Close()
	}
}

// tierBuilders construct the isolating tiers; each tier's file adds itself.
var tierBuilders []tierBuilder

type tierBuilder struct {
	tier  isolation.Tier
	build func(Config, *slog.Logger) (sandbox.Sandbox, error)
	// reap removes what dead processes left of the tier under c's directories; nil when the tier
	// leaves nothing outside its process.
	reap func(Config, *slog.Logger)
}

// brokenTier stands for a tier whose sandbox could not be set up on this host: it is unavailable
// and says why.
type brokenTier struct {
	tier isolation.Tier
	err  error
}

func (b brokenTier) Tier() isolation.Tier { return b.tier }
func (b brokenTier) Probe(context.Context) isolation.Availability {
	return isolation.Availability{Reason: "could not be set up: " + b.err.Error(), Fix: "see the reason; run as root or set the tier's directories in the config"}
}
func (b brokenTier) Supports(isolation.RuntimeRequirement) string { return b.err.Error() }
func (b brokenTier) Run(context.Context, sandbox.Call) (sandbox.Outcome, error) {
	return sandbox.Outcome{}, &isolation.Error{Kind: isolation.ErrTierUnavailable, Message: b.err.Error()}
}
func (b brokenTier) Close() error { return nil }
