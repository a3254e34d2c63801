// Package executor runs tool calls: catalog → tier selection → sandbox → validated result. It owns
// the fallback policy, input and output validation and error classification, so no tier repeats
// them.
package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/sandbox"
)

// Config configures an Executor. It is copied by New; later changes have no effect.
type Config struct {
	// Catalog is the tools root (nil: no tool folders, only the sandboxes' built-in tools).
	Catalog *catalog.Catalog
	// Sandboxes are the tiers this executor may use, at most one per tier. Tiers without a sandbox
	// are reported unavailable.
	Sandboxes []sandbox.Sandbox
	// Strict refuses fallbacks to a weaker tier than a tool's ideal one (per-call options may set it
	// too, never unset it).
	Strict bool
	// MaxOutputBytes bounds output.json (default 1 MiB, at most sandbox.MaxOutputBytesLimit).
	MaxOutputBytes int64
	// MaxTimeout is the timeout ceiling: a tool's timeout_ms or a call's WithTimeout above it
	// gets it (default DefaultMaxTimeout, 60 s). DefaultTimeout applies to tools that set none
	// (default 10 s, at most MaxTimeout).
	MaxTimeout     time.Duration
	DefaultTimeout time.Duration
	// MaxMemoryMB is the memory ceiling per tier: a tool's memory_mb above it gets it. Tiers not
	// named get DefaultMaxMemoryMB's. Requests above a ceiling are lowered, never refused (also
	// under Strict, which is about tiers), and the Result's Limits say so.
	MaxMemoryMB map[isolation.Tier]int
	// Isolation is the operator's choice of tier per runtime requirement (for example
	// ContainerImage → Firecracker to run image tools in microVMs), ToolIsolation per tool name
	// (it wins). A chosen tier is where selection starts and the call's ideal tier: falling back
	// to a weaker one is a downgrade. Requirements and tools not named keep the requirement's
	// ideal tier (ContainerImage → Oci). A call's WithTier still forces a tier.
	Isolation     map[isolation.RuntimeRequirement]isolation.Tier
	ToolIsolation map[string]isolation.Tier
	// Egress are the operator's network grants (see EgressGrants); zero: no tool gets a network.
	Egress EgressGrants
	// Logger receives one record per call; nil logs nowhere.
	Logger *slog.Logger
	// Secrets maps a tool's name to environment variables only that tool gets, in every tier,
	// over its tool.json env. Their values are hidden (Redacted) in the call's stdout and stderr
	// tails and error text, and are never logged.
	Secrets map[string]map[string]string
	// TracerProvider, when set, receives a span per call and one per phase of it (SpanCall and
	// the phases: catalog, select, setup, run, teardown), a child of the span in Execute's
	// context (a traceparent the server extracted, for example). The spans carry the tool, the
	// tier, the downgrade and the outcome, never the input, output, environment or secrets. Nil:
	// no spans, at the cost of a nil check per phase.
	TracerProvider trace.TracerProvider
	// AfterClose, when set, runs once when Close has closed the sandboxes (the composition root
	// flushes what it built for this executor, such as its tracer provider); its error is Close's.
	AfterClose func() error
	// Remote, when set, runs calls on other hosts (package fleet's gateway): Execute checks the
	// name and the input here, against this executor's catalog, then hands the call to Remote
	// instead of a local sandbox. Tiers without a local sandbox report Remote's availability.
	Remote Remote
}

// Remote runs calls elsewhere. It applies the selection policy itself (isolation.Select over
// what the other hosts offer), so a fallback is reported as a downgrade exactly as here.
type Remote interface {
	Run(ctx context.Context, c RemoteCall) (*Result, error)
	// Availability says whether some other host runs tier t now.
	Availability(ctx context.Context, t isolation.Tier) isolation.Availability
}

// RemoteCall is a call handed to a Remote: its input is valid for the tool's schema.
type RemoteCall struct {
	ID    string
	Tool  *catalog.Tool
	Input []byte
	// Policy is the call's selection policy (the executor's Strict, the call's WithStrict and
	// WithTier).
	Policy isolation.Policy
	// Timeout is the call's WithTimeout (0: the tool's own, as the running host resolves it).
	Timeout time.Duration
}

// Result is a successful call.
type Result struct {
	CallID string          `json:"call_id"`
	Tool   string          `json:"tool"`
	Output json.RawMessage `json:"output"`
	// Tier is the tier that ran the call; Ideal the tool's ideal tier.
	Tier  isolation.Tier `json:"tier"`
	Ideal isolation.Tier `json:"ideal_tier"`
	// Degraded is true when Tier isolates less strongly than Ideal (a security downgrade).
	Degraded   bool          `json:"degraded"`
	Backend    string        `json:"backend,omitempty"`
	Duration   time.Duration `json:"-"`
	DurationMS float64       `json:"duration_ms"`
	// Stdout and Stderr are bounded tails of the tool's stdout and stderr (its result is
	// output.json, not stdout).
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// Limits are the limits the call ran under and what was lowered to a ceiling.
	Limits Limits `json:"limits"`
	// ToolDigest is the SHA-256 of the tool version that ran, when a fleet routed the call.
	ToolDigest string `json:"tool_digest,omitempty"`
}

// Option changes one call.
type Option func(*callOptions)

type callOptions struct {
	tier    *isolation.Tier
	strict  bool
	timeout time.Duration
	callID  string
	tool    *catalog.Tool
}

// WithTier runs the call only in tier t (no fallback).
func WithTier(t isolation.Tier) Option { return func(o *callOptions) { o.tier = &t } }

// WithStrict refuses a downgrade for this call.
func WithStrict() Option { return func(o *callOptions) { o.strict = true } }

// WithTimeout overrides the tool's timeout (still lowered to Config.MaxTimeout).
func WithTimeout(d time.Duration) Option { return func(o *callOptions) { o.timeout = d } }

// WithTool runs t, a tool already loaded (from another catalog, e.g. one version of a tool a
// fleet worker holds by digest), instead of looking the name up in the executor's catalog. The
// call's name must be t.Name.
func WithTool(t *catalog.Tool) Option { return func(o *callOptions) { o.tool = t } }

// WithCallID sets the call id (default: a random UUID).
func WithCallID(id string) Option { return func(o *callOptions) { o.callID = id } }

// TierStatus is one tier's state on this host.
type TierStatus struct {
	Tier isolation.Tier `json:"tier"`
	isolation.Availability
}

// Executor runs calls. Safe for concurrent use; Close is idempotent.
type Executor struct {
	cfg       Config
	log       *slog.Logger
	sandboxes map[isolation.Tier]sandbox.Sandbox

	clock  func() time.Time // nil: time.Now; set only by tests
	tracer trace.Tracer     // nil: tracing off

	probeMu sync.Mutex // protects probes
	probes  map[isolation.Tier]probeResult

	closeOnce sync.Once
	closeErr  error
}

// New returns an Executor.
func New(cfg Config) (*Executor, error) {
	if err := cfg.ceilings(); err != nil {
		return nil, err
	}
	if err := checkSecrets(cfg.Secrets); err != nil {
		return nil, err
	}
	// The maps too are copied: later changes to the caller's have no effect.
	cfg.Isolation, cfg.ToolIsolation = maps.Clone(cfg.Isolation), maps.Clone(cfg.ToolIsolation)
	if cfg.Secrets != nil {
		secrets := make(map[string]map[string]string, len(cfg.Secrets))
		for tool, env := range cfg.Secrets {
			secrets[tool] = maps.Clone(env)
		}
		cfg.Secrets = secrets
	}
	e := &Executor{cfg: cfg, log: cfg.Logger, sandboxes: map[isolation.Tier]sandbox.Sandbox{}, probes: map[isolation.Tier]probeResult{},
		tracer: newTracer(cfg.TracerProvider)}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	for _, s := range cfg.Sandboxes {
		if _, dup := e.sandboxes[s.Tier()]; dup {
			return nil, fmt.Errorf("executor: two sandboxes for tier %s", s.Tier())
		}
		e.sandboxes[s.Tier()] = s
	}
	return e, nil
}

// Catalog returns the executor's catalog (nil when it has none).
func (e *Executor) Catalog() *catalog.Catalog { return e.cfg.Catalog }

// Sandbox returns the sandbox of a tier, if configured.
func (e *Executor) Sandbox(t isolation.Tier) (sandbox.Sandbox, bool) {
	s, ok := e.sandboxes[t]
	return s, ok
}

// probeResult is a remembered probe: an available tier stays so for the executor's life; an
// unavailable one is probed again after NegativeProbeTTL (an operator who runs `axoiso vm
// prepare` or installs crun while a server runs need not restart it).
type probeResult struct {
	isolation.Availability
	at time.Time
}

// NegativeProbeTTL is how long an unavailable tier's probe is trusted.
const NegativeProbeTTL = 30 * time.Second

// Availability probes a tier and remembers the answer (see probeResult).
func (e *Executor) Availability(ctx context.Context, t isolation.Tier) isolation.Availability {
	e.probeMu.Lock()
	r, ok := e.probes[t]
	e.probeMu.Unlock()
	if ok && (r.Available || e.now().Sub(r.at) < NegativeProbeTTL) {
		return r.Availability
	}
	var a isolation.Availability
	s, ok := e.sandboxes[t]
	if !ok && e.cfg.Remote != nil {
		// Not remembered: the fleet changes as hosts come and go, and Remote caches its view.
		return e.cfg.Remote.Availability(ctx, t)
	}
	if !ok {
		a = isolation.Availability{Reason: fmt.Sprintf("the %s tier is not configured in this executor", t), Fix: "configure a sandbox for it"}
	} else {
		a = s.Probe(ctx)
	}
	e.probeMu.Lock()
	e.probes[t] = probeResult{Availability: a, at: e.now()}
	e.probeMu.Unlock()
	return a
}

// now is time.Now, replaceable by this package's tests.
func (e *Executor) now() time.Time {
	if e.clock != nil {
		return e.clock()
	}
	return time.Now()
}

// Tiers reports every tier's availability, weakest first.
func (e *Executor) Tiers(ctx context.Context) []TierStatus {
	out := make([]TierStatus, 0, len(isolation.Tiers()))
	for _, t := range isolation.Tiers() {
		out = append(out, TierStatus{Tier: t, Availability: e.Availability(ctx, t)})
	}
	return out
}

// Tool loads a tool from the catalog, or a built-in of a sandbox that offers built-ins.
func (e *Executor) Tool(name string) (*catalog.Tool, error) {
	if e.cfg.Catalog == nil {
		if err := catalog.ValidateName(name); err != nil {
			return nil, err
		}
		if b, ok := e.builtin(name); ok {
			return b, nil
		}
		return nil, &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("no tool %q is registered", name)}
	}
	t, err := e.cfg.Catalog.Get(name)
	if errors.Is(err, isolation.ErrToolNotFound) {
		if b, ok := e.builtin(name); ok {
			return b, nil
		}
	}
	return t, err
}

// Tools lists the catalog's tools and the built-ins, sorted by name; a catalog tool shadows a
// built-in of the same name.
func (e *Executor) Tools() ([]*catalog.Tool, []error) {
	var tools []*catalog.Tool
	var errs []error
	if e.cfg.Catalog != nil {
		tools, errs = e.cfg.Catalog.List()
	}
	seen := map[string]bool{}
	for _, t := range tools {
		seen[t.Name] = true
	}
	for _, b := range e.builtins() {
		for _, bt := range b.Builtins() {
			if !seen[bt.Name] {
				seen[bt.Name] = true
				tools = append(tools, bt)
			}
		}
	}
	sortTools(tools)
	return tools, errs
}

func (e *Executor) builtin(name string) (*catalog.Tool, bool) {
	for _, b := range e.builtins() {
		for _, bt := range b.Builtins() {
			if bt.Name == name {
				return bt, true
			}
		}
	}
	return nil, false
}

// builtins are the sandboxes that provide tools of their own, weakest tier first: when two offer
// the same name, the weaker tier's wins, every time.
func (e *Executor) builtins() []sandbox.Builtins {
	var out []sandbox.Builtins
	for _, t := range isolation.Tiers() {
		if b, ok := e.sandboxes[t].(sandbox.Builtins); ok {
			out = append(out, b)
		}
	}
	return out
}

// Select chooses the tier for a tool under the executor's policy and opts.
func (e *Executor) Select(ctx context.Context, t *catalog.Tool, opts ...Option) (isolation.Selection, error) {
	o := e.options(opts)
	return e.selectTier(ctx, t, o)
}

func (e *Executor) options(opts []Option) callOptions {
	var o callOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

func (e *Executor) selectTier(ctx context.Context, t *catalog.Tool, o callOptions) (isolation.Selection, error) {
	policy := isolation.Policy{Strict: e.cfg.Strict || o.strict, Force: o.tier}
	if tier, ok := e.cfg.ToolIsolation[t.Name]; ok {
		policy.Prefer = &tier
	} else if tier, ok := e.cfg.Isolation[t.Runtime]; ok {
		policy.Prefer = &tier
	}
	sel, err := isolation.Select(t.Runtime, policy, func(tier isolation.Tier) isolation.Candidate {
		c := isolation.Candidate{Availability: e.Availability(ctx, tier)}
		if s, ok := e.sandboxes[tier]; ok && c.Available {
			c.Unsupported = supports(s, t)
			if es, ok := s.(sandbox.EgressSupporter); ok && c.Unsupported == "" {
				// A tool with a network policy runs only where the policy can be enforced.
				if pol, _ := e.Egress(t); !pol.IsZero() {
					c.Unsupported = es.SupportsEgress()
				}
			}
		}
		return c
	})
	if err != nil {
		var ie *isolation.Error
		if errors.As(err, &ie) {
			ie.Tool = t.Name
		}
	}
	return sel, err
}

// supports says why s cannot run t ("" when it can): its requirement, or on its base image when
// it names one (a tier's own root does not matter then).
func supports(s sandbox.Sandbox, t *catalog.Tool) string {
	if t.Base == "" {
		return s.Supports(t.Runtime)
	}
	if b, ok := s.(sandbox.BaseSupporter); ok {
		return b.SupportsBase(t.Runtime)
	}
	return fmt.Sprintf("the %s tier cannot run a tool on a base image (%q)", s.Tier(), t.Base)
}

// Execute runs tool name with input (a JSON value) and returns its validated output. Errors are
// *isolation.Error values of the classes in package isolation, or ctx's error when ctx ended
// before its deadline.
func (e *Executor) Execute(ctx context.Context, name string, input []byte, opts ...Option) (*Result, error) {
	o := e.options(opts)
	callID := o.callID
	if callID == "" {
		callID = uuid.NewString()
	}
	start := time.Now()
	var lim Limits
	ctx, tr := e.startTrace(ctx, callID, name)
	res, err := e.execute(ctx, tr, callID, name, input, o, &lim)
	tr.end(res, err)
	dur := time.Since(start)
	if err != nil {
		e.log.LogAttrs(ctx, slog.LevelInfo, "call failed", append([]slog.Attr{slog.String("call_id", callID), slog.String("tool", name),
			slog.String("kind", isolation.KindName(err)), slog.Duration("duration", dur), slog.String("error", err.Error())}, append(lim.logAttrs(), tr.logAttrs()...)...)...)
		var ie *isolation.Error
		if errors.As(err, &ie) && ie.CallID == "" {
			ie.CallID = callID
		}
		return nil, err
	}
	res.Duration = dur
	res.DurationMS = float64(dur.Microseconds()) / 1000
	e.log.LogAttrs(ctx, slog.LevelInfo, "call", append([]slog.Attr{slog.String("call_id", callID), slog.String("tool", name),
		slog.String("tier", res.Tier.String()), slog.Bool("degraded", res.Degraded), slog.Duration("duration", dur)}, append(lim.logAttrs(), tr.logAttrs()...)...)...)
	return res, nil
}

// execute runs the call; *lim receives its limits once they are known (for the log record).
// tr (nil when tracing is off) follows its phases.
func (e *Executor) execute(ctx context.Context, tr *callTrace, callID, name string, input []byte, o callOptions, lim *Limits) (*Result, error) {
	tr.begin(ctx, SpanCatalog)
	if err := catalog.ValidateName(name); err != nil {
		return nil, err
	}
	tool, err := e.toolFor(name, o)
	if err != nil {
		return nil, err
	}
	if err := catalog.CheckInput(name, input); err != nil {
		return nil, err
	}
	if err := tool.ValidateInput(input); err != nil {
		return nil, err
	}
	if e.cfg.Remote != nil {
		return e.cfg.Remote.Run(tr.begin(ctx, SpanRemote), RemoteCall{ID: callID, Tool: tool, Input: input,
			Policy: isolation.Policy{Strict: e.cfg.Strict || o.strict, Force: o.tier}, Timeout: o.timeout})
	}
	sel, err := e.selectTier(tr.begin(ctx, SpanSelect), tool, o)
	if err != nil {
		return nil, err
	}
	tr.selected(sel)
	sb := e.sandboxes[sel.Tier]
	call, rep := e.newCall(callID, tool, input, o, sel.Tier)
	*lim = rep
	timeout := call.Limits.Timeout
	fail := func(kind error, format string, args ...any) *isolation.Error {
		return &isolation.Error{Kind: kind, Tool: name, Tier: sel.Tier, HasTier: true, Message: fmt.Sprintf(format, args...)}
	}

	if su, ok := sb.(sandbox.Setupper); ok {
		// Compiling is our cost, not the tool's: it happens before the tool's clock starts.
		if err := su.Setup(tr.begin(ctx, SpanSetup), call); err != nil {
			return nil, sandboxError(ctx, ctx, err, name, sel.Tier, timeout)
		}
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	if q, ok := sb.(sandbox.Queuer); ok && q.QueuesCalls() {
		// The sandbox starts the tool's clock (call.Limits.Timeout) when the call leaves its queue.
		cancel()
		runCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	out, err := sb.Run(tr.begin(runCtx, SpanRun), call)
	tr.ran()
	redactOutcome(e.redactor(name), &out, err)
	if err != nil {
		err = sandboxError(ctx, runCtx, err, name, sel.Tier, timeout)
		explainTimeout(err, rep)
		return nil, err
	}
	switch {
	case out.ExitCode != 0:
		fe := fail(isolation.ErrToolFailed, "exited with code %d", out.ExitCode)
		fe.ExitCode, fe.Stderr, fe.Stdout = out.ExitCode, out.Stderr, out.Stdout
		return nil, fe
	case out.Output == nil:
		fe := fail(isolation.ErrOutputMissing, "the tool exited 0 without writing %s", sandbox.GuestOutputPath)
		fe.Stderr, fe.Stdout = out.Stderr, out.Stdout
		return nil, fe
	case int64(len(out.Output)) > e.cfg.MaxOutputBytes:
		return nil, fail(isolation.ErrOutputTooLarge, "%d bytes, the limit is %d", len(out.Output), e.cfg.MaxOutputBytes)
	case !json.Valid(out.Output):
		fe := fail(isolation.ErrOutputInvalid, "%s is not valid JSON", sandbox.OutputFile)
		fe.Stderr, fe.Stdout = out.Stderr, out.Stdout
		return nil, fe
	}
	return &Result{
		CallID:   callID,
		Tool:     name,
		Output:   json.RawMessage(out.Output),
		Tier:     sel.Tier,
		Ideal:    sel.Ideal,
		Degraded: sel.Degraded,
		Backend:  out.Backend,
		Stdout:   out.Stdout,
		Stderr:   out.Stderr,
		Limits:   rep,
	}, nil
}

// sandboxError turns what a sandbox's Setup or Run returned into the call's error: an
// *isolation.Error carrying the tool and tier (ErrSandboxFailed when the sandbox's error matches
// no class), or ctx's error when the caller gave up. runCtx is the context the sandbox ran under (with the call's deadline).
func sandboxError(ctx, runCtx context.Context, err error, name string, tier isolation.Tier, timeout time.Duration) error {
	var ie *isolation.Error
	switch {
	case errors.As(err, &ie):
		ie.Tool, ie.Tier, ie.HasTier = name, tier, true
		if ie.Kind == isolation.ErrTimeout && ie.Message == "" {
			ie.Message = fmt.Sprintf("stopped after %s", timeout)
		}
		return ie
	case errors.Is(err, isolation.ErrTimeout) || (errors.Is(err, context.DeadlineExceeded) && runCtx.Err() != nil && ctx.Err() == nil):
		return &isolation.Error{Kind: isolation.ErrTimeout, Tool: name, Tier: tier, HasTier: true, Message: fmt.Sprintf("stopped after %s", timeout), Err: err}
	case ctx.Err() != nil:
		return fmt.Errorf("tool %q: %w", name, ctx.Err())
	}
	for _, k := range isolation.Kinds() {
		if errors.Is(err, k) {
			return &isolation.Error{Kind: k, Tool: name, Tier: tier, HasTier: true, Err: err}
		}
	}
	// Nothing typed it, so the tier itself failed (a VMM killed, a state root full or read-only):
	// "internal" is for faults of the service, and the caller should learn which tier broke.
	return &isolation.Error{Kind: isolation.ErrSandboxFailed, Tool: name, Tier: tier, HasTier: true, Err: err}
}

// newCall makes the Call of a tool in tier, with its limits resolved (tool.json, call options, the
// executor's ceilings for that tier; see limits).
func (e *Executor) newCall(callID string, tool *catalog.Tool, input []byte, o callOptions, tier isolation.Tier) (sandbox.Call, Limits) {
	lim, rep := e.limits(tool, o, tier)
	return sandbox.Call{
		ID:         callID,
		Tool:       tool.Name,
		Runtime:    tool.Runtime,
		Dir:        tool.Dir,
		Entrypoint: tool.EntrypointPath,
		Base:       tool.BasePath,
		Input:      input,
		Env:        e.env(tool),
		Limits:     lim,
	}, rep
}

// Prepare does a tool's ahead-of-time work in the tier it would run in now (compile its Wasm
// module, fill its warm pool), so that its first call is not cold. Tiers without such work do
// nothing.
func (e *Executor) Prepare(ctx context.Context, name string, opts ...Option) error {
	o := e.options(opts)
	tool, err := e.toolFor(name, o)
	if err != nil {
		return err
	}
	sel, err := e.selectTier(ctx, tool, o)
	if err != nil {
		return err
	}
	if p, ok := e.sandboxes[sel.Tier].(sandbox.Preparer); ok {
		call, _ := e.newCall("prepare-"+uuid.NewString(), tool, nil, o, sel.Tier)
		return p.Prepare(ctx, call)
	}
	return nil
}

// toolFor is the call's WithTool, or name looked up in the catalog.
func (e *Executor) toolFor(name string, o callOptions) (*catalog.Tool, error) {
	if o.tool == nil {
		return e.Tool(name)
	}
	if o.tool.Name != name {
		return nil, fmt.Errorf("executor: WithTool(%q) for a call of %q", o.tool.Name, name)
	}
	return o.tool, nil
}

// Close closes every sandbox. Idempotent.
func (e *Executor) Close() error {
	e.closeOnce.Do(func() {
		var errs []error
		for _, s := range e.sandboxes {
			errs = append(errs, s.Close())
		}
		if e.cfg.AfterClose != nil {
			errs = append(errs, e.cfg.AfterClose())
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}
