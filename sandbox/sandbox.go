// Package sandbox is the seam every tier implements: a Sandbox turns one Call into one Outcome in
// a fresh, isolated environment and removes everything it created, whatever happened.
//
// The executor owns selection, fallback, input and output validation and error mapping; a tier only
// runs the call and reports what happened. Optional abilities (warm pools, snapshots) are separate
// small interfaces found by type assertion.
package sandbox

import (
	"context"
	"errors"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/egress"
)

// The tool I/O protocol, in every tier that has a filesystem.
const (
	GuestDir        = "/axocoatl"
	GuestInputPath  = "/axocoatl/input.json"
	GuestOutputPath = "/axocoatl/output.json"
	InputFile       = "input.json"
	OutputFile      = "output.json"
)

// Defaults for limits a tool does not set.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultMaxOutputBytes = 1 << 20
	DefaultMaxStderrBytes = 8 << 10
)

// MaxMemoryMB is the largest memory limit any tier applies (1 TiB); a larger Limits.MemoryMB is
// lowered to it. It only keeps the MB→bytes conversions of the tiers from overflowing (2^44 MB
// wraps to 0 bytes, which a container runtime reads as "no limit"); the executor's per-tier
// ceilings are the real bounds.
const MaxMemoryMB = 1 << 20

// MaxOutputBytesLimit and MaxStderrBytesLimit bound Limits.MaxOutputBytes and MaxStderrBytes
// (WithDefaults lowers larger values): output and stderr are held in memory and framed, and a
// tier's buffer sizing must not overflow.
const (
	MaxOutputBytesLimit = 1 << 30
	MaxStderrBytesLimit = 1 << 20
)

// Limits bound one call.
type Limits struct {
	// Timeout is the wall-clock limit; the call is killed at it and reports isolation.ErrTimeout.
	Timeout time.Duration
	// MemoryMB is the memory limit; 0 (or less) means the tier's default. Tiers lower values over
	// MaxMemoryMB to it.
	MemoryMB int
	// MaxOutputBytes bounds output.json; larger is isolation.ErrOutputTooLarge.
	MaxOutputBytes int64
	// MaxStderrBytes bounds the kept stderr tail, and the stdout tail.
	MaxStderrBytes int
	// Egress is the call's effective network policy; the zero Policy (the default) gives the
	// call no network at all: loopback only, no device. A tier that cannot enforce a non-zero
	// policy refuses the call (isolation.ErrTierUnavailable) rather than run it without.
	Egress egress.Policy
}

// WithDefaults fills unset fields and lowers values over the Max…Limit bounds to them.
func (l Limits) WithDefaults() Limits {
	l.MemoryMB = ClampMemoryMB(l.MemoryMB)
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	if l.MaxOutputBytes <= 0 {
		l.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if l.MaxStderrBytes <= 0 {
		l.MaxStderrBytes = DefaultMaxStderrBytes
	}
	l.MaxOutputBytes = min(l.MaxOutputBytes, MaxOutputBytesLimit)
	l.MaxStderrBytes = min(l.MaxStderrBytes, MaxStderrBytesLimit)
	return l
}

// ClampMemoryMB returns mb bounded to [0, MaxMemoryMB] (0: the tier's default).
func ClampMemoryMB(mb int) int {
	return max(0, min(mb, MaxMemoryMB))
}

// MemoryDefaulter is implemented by sandboxes with a memory limit of their own for calls that set
// none, so that the executor can report (and cap) the limit a call really gets.
type MemoryDefaulter interface {
	DefaultMemoryMB() int
}

// Call is one execution of one tool. The executor validates the tool name and the input before a
// sandbox sees them; Dir and Entrypoint are absolute, cleaned paths inside the tools root.
type Call struct {
	// ID is unique per call (for logs, container ids, VM names).
	ID string
	// Tool is the validated tool name.
	Tool string
	// Runtime is the tool's declared requirement.
	Runtime isolation.RuntimeRequirement
	// Dir is the tool's folder (for ContainerImage tools, the OCI bundle).
	Dir string
	// Entrypoint is the absolute path of the tool's module, script or executable ("" for
	// ContainerImage and NativeTrusted tools).
	Entrypoint string
	// Base, for a Python, Shell or Arbitrary tool whose tool.json names a base image, is that
	// image's OCI bundle (absolute, inside the tools root): the tool runs on its root instead of
	// the tier's own (see BaseSupporter). "" otherwise.
	Base string
	// Input is the call's input, a valid JSON value.
	Input []byte
	// Env is the tool's environment beyond the tier's own, NAME=value with unique names: its
	// tool.json env and the secrets the operator granted it. It holds secrets: never log it.
	Env []string
	// Limits bound the call; WithDefaults has been applied.
	Limits Limits
}

// Outcome is what a tool did. A sandbox returns an Outcome with a nil error whenever the tool ran to
// an exit, whatever its exit code; the executor classifies it.
type Outcome struct {
	// ExitCode is the tool's exit status (0 for success).
	ExitCode int
	// Output is output.json's content; nil when the tool wrote none.
	Output []byte
	// Stderr and Stdout are bounded tails (Limits.MaxStderrBytes each) of the tool's stderr and
	// stdout, kept apart in every tier.
	Stderr string
	Stdout string
	// Backend names the mechanism that ran the call ("wazero", "libcontainer", "qemu-microvm", ...).
	Backend string
}

// Sandbox runs single calls of tools in one tier.
//
// Sandboxes are safe for concurrent use. Run returns an Outcome for a tool that exited, or an error
// that matches isolation.ErrTimeout (deadline or context end), isolation.ErrMemoryLimit,
// isolation.ErrOutputTooLarge, isolation.ErrTierUnavailable, isolation.ErrInvalidTool, or another
// error for failures of the sandbox itself (the executor reports an error of no class as
// isolation.ErrSandboxFailed with the tier). Whatever Run returns, every process, mount, cgroup, file and VM the call created
// is gone or being removed off the call path. Close releases the sandbox's shared resources (pools,
// caches) and is idempotent; Run after Close fails.
type Sandbox interface {
	Tier() isolation.Tier
	// Probe reports whether this tier works on this host, with a reason and a fix when it does not.
	Probe(ctx context.Context) isolation.Availability
	// Supports returns "" when the sandbox can run tools of the requirement, else the reason.
	Supports(req isolation.RuntimeRequirement) string
	Run(ctx context.Context, call Call) (Outcome, error)
	Close() error
}

// BaseSupporter is implemented by sandboxes that can run script tools on a base image
// (Call.Base). SupportsBase returns "" when they can run tools of the requirement on one, else
// the reason; a sandbox without it cannot run any tool that names a base.
type BaseSupporter interface {
	SupportsBase(req isolation.RuntimeRequirement) string
}

// EgressSupporter is implemented by sandboxes that cannot give every call with a network policy
// (Limits.Egress) the network it allows: SupportsEgress returns "" when they can here, else why
// (the executor then picks another tier, as for an unsupported runtime). A sandbox without it
// has no such limit (it enforces policies its own way, or gives no tool a network device).
type EgressSupporter interface {
	SupportsEgress() string
}

// Preparer is implemented by sandboxes that can do per-tool work ahead of the first call
// (compiling a module, filling a warm pool). Prepare is idempotent.
type Preparer interface {
	Prepare(ctx context.Context, call Call) error
}

// Setupper is implemented by sandboxes with per-tool work that is the platform's cost, not the
// tool's (compiling a module the first time it is seen). The executor calls Setup before every
// call, before the call's timeout starts; Setup must be cheap once the work is done. Both exist
// because they run at different times for different reasons: Prepare ahead of any call, by
// choice (`serve --prepare`, a pool to fill), Setup on every call's path, so that a first call's
// timeout does not pay the platform's one-time cost.
type Setupper interface {
	Setup(ctx context.Context, call Call) error
}

// Queuer is implemented by sandboxes that may hold a call before it runs (waiting for one of a
// bounded number of slots). When QueuesCalls reports true, Run applies call.Limits.Timeout
// itself, from the moment the tool starts, so that time queued is not charged to the tool: the
// executor gives such a Run the caller's context (which still bounds the whole call) instead of
// one carrying the tool's deadline. The sandbox bounds the wait itself (a queue length and a
// queue deadline) and returns an isolation.ErrBusy error past either.
type Queuer interface {
	QueuesCalls() bool
}

// PoolStats is one warm pool's state.
type PoolStats struct {
	Tool  string `json:"tool"`
	Ready int    `json:"ready"`
	Size  int    `json:"size"`
	// IdleRSSBytes is the mean resident set of the ready items' processes (a pooled VM's VMM),
	// 0 where the tier has no process per item or cannot read it.
	IdleRSSBytes int64 `json:"idle_rss_bytes,omitempty"`
}

// Pooler is implemented by sandboxes that keep warm pools.
type Pooler interface {
	PoolStats() []PoolStats
}

// Builtins is implemented by sandboxes that provide tools of their own, without a tool folder
// (the in-process tier's registered functions, Wasm modules registered from memory). Their
// entries come from catalog.NewBuiltin, so they obey tool.json's rules; the executor runs them
// like catalog tools, with Call.Dir and Call.Entrypoint empty. A tool folder of the same name
// shadows a built-in.
type Builtins interface {
	// Builtins lists the tools, sorted by name.
	Builtins() []*catalog.Tool
}

// ContextError is the error of a call whose context ended, as the contract says: its deadline is
// an isolation.ErrTimeout; a cancellation (a client that went away, a shutdown) is ctx's own
// context.Canceled, not a slow tool. Every tier returns this rather than its own variant.
func ContextError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &isolation.Error{Kind: isolation.ErrTimeout, Err: context.DeadlineExceeded}
	}
	return ctx.Err()
}

// exitHookKey is the context key of the hook ToolExited calls.
type exitHookKey struct{}

// WithExitHook returns ctx carrying hook, which ToolExited calls: the executor's tracing sets it
// on a traced call's Run context to end the run phase when the tool exits and start teardown.
func WithExitHook(ctx context.Context, hook func()) context.Context {
	return context.WithValue(ctx, exitHookKey{}, hook)
}

// ToolExited tells the executor that the call's tool has exited (or was killed) and what the
// sandbox does from now on is clean-up the call waits for: Run calls it once, after the tool's
// last instruction and before its own teardown. Without a hook in ctx (tracing off) it costs a
// context lookup.
func ToolExited(ctx context.Context) {
	if hook, ok := ctx.Value(exitHookKey{}).(func()); ok {
		hook()
	}
}
