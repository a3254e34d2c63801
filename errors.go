package isolation

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// The error classes. Every error a call returns matches exactly one of them with errors.Is; an
// *Error carries the details (tool, tier, exit code, stderr tail).
var (
	ErrInvalidToolName = errors.New("invalid tool name")
	ErrInvalidInput    = errors.New("invalid input")
	ErrToolNotFound    = errors.New("tool not found")
	// ErrTierUnavailable: no tier that can run the tool is available on this host.
	ErrTierUnavailable = errors.New("tier unavailable")
	// ErrDowngradeRefused: only a weaker tier than the tool's ideal one is available and the
	// policy forbids downgrades. It also matches ErrTierUnavailable.
	ErrDowngradeRefused = errors.New("downgrade refused")
	ErrToolFailed       = errors.New("tool failed")
	ErrOutputMissing    = errors.New("output missing")
	ErrOutputInvalid    = errors.New("output invalid")
	ErrOutputTooLarge   = errors.New("output too large")
	ErrTimeout          = errors.New("timeout")
	ErrMemoryLimit      = errors.New("memory limit")
	// ErrInvalidTool: the tool's folder or manifest is broken (unknown runtime, a limit out of
	// range, an escaping entrypoint, a cyclic schema, a module that does not compile). The
	// operator's fault, not the caller's, and not a fault of the service.
	ErrInvalidTool = errors.New("invalid tool")
	// ErrSandboxFailed: the tier itself failed while running the call (its VMM died, its state
	// root is full or read-only), as opposed to the tool failing inside it.
	ErrSandboxFailed = errors.New("sandbox failed")
	// ErrBusy: the call was not started because a queue or concurrency limit was full, or it
	// waited past its queue deadline; retrying later may succeed.
	ErrBusy = errors.New("busy")
	// ErrWorkerLost: a fleet worker accepted the call, then went silent (its process died, its
	// host or link went down) before answering. The tool may have run, wholly or in part: the
	// call is not run again unless its tool declares "idempotent": true.
	ErrWorkerLost = errors.New("worker lost")
)

// Error is the error a call returns. Kind is one of the class sentinels above.
type Error struct {
	Kind    error
	Tool    string
	Tier    Tier
	HasTier bool
	// Message is a human sentence naming what was wrong.
	Message string
	// ExitCode is the tool's exit status for ErrToolFailed (and, where known, others).
	ExitCode int
	// Stderr and Stdout are bounded tails of what the tool wrote on stderr and stdout.
	Stderr string
	Stdout string
	// CallID identifies the call (set by the executor).
	CallID string
	// Err is the underlying cause, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind.Error())
	if e.Tool != "" {
		fmt.Fprintf(&b, ": tool %q", e.Tool)
	}
	if e.HasTier {
		fmt.Fprintf(&b, " (tier %s)", e.Tier)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Err != nil && (e.Message == "" || !strings.Contains(e.Message, e.Err.Error())) {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Is matches the error's class; ErrDowngradeRefused also matches ErrTierUnavailable.
func (e *Error) Is(target error) bool {
	if target == e.Kind {
		return true
	}
	return e.Kind == ErrDowngradeRefused && target == ErrTierUnavailable
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error of the given class.
func Errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// The outcomes that are not error classes.
const (
	KindOK = "ok"
	// KindCanceled: the caller went away, or the server shut down, before the call ended.
	KindCanceled = "canceled"
	// KindInternal: a fault of the service itself (a bug, or an error nothing typed).
	KindInternal = "internal"
)

// Outcome is how a call ended, as every surface reports it. The table of outcomes is the one
// place that maps an error class to its wire kind, HTTP status, CLI exit code and retryability:
// the HTTP API, MCP, the metrics and axoiso all read it.
type Outcome struct {
	// Kind is the wire name: the kind of HTTP and MCP error bodies, the metrics' outcome label,
	// the logs' kind attribute.
	Kind string
	// Class is the error class sentinel; nil for ok, canceled and internal.
	Class error
	// HTTPStatus is the status POST /v1/tools/{name}/execute answers with.
	HTTPStatus int
	// ExitCode is the exit status of axoiso run.
	ExitCode int
	// Retryable: the same call, unchanged, may succeed later (a full queue, a sandbox that died,
	// a server that shut down). The HTTP API adds Retry-After to retryable errors.
	Retryable bool
}

// outcomes is the table, in match order: ErrDowngradeRefused comes before ErrTierUnavailable,
// which it also matches. Statuses are literal numbers so that this package does not pull in
// net/http (every container init links it).
var outcomes = [...]Outcome{
	{KindOK, nil, 200, 0, false},
	{"invalid_tool_name", ErrInvalidToolName, 400, 2, false},
	{"invalid_input", ErrInvalidInput, 400, 2, false},
	{"tool_not_found", ErrToolNotFound, 404, 3, false},
	// A broken tool folder is the operator's to fix: not the caller's request (4xx would say
	// "change your request") yet not a fault of the service either (500). 424 Failed Dependency:
	// the call depended on the tool, and the tool is broken. For the CLI it is as good as absent.
	{"invalid_tool", ErrInvalidTool, 424, 3, false},
	{"downgrade_refused", ErrDowngradeRefused, 409, 4, false},
	{"tier_unavailable", ErrTierUnavailable, 422, 4, false},
	{"tool_failed", ErrToolFailed, 502, 5, false},
	{"output_missing", ErrOutputMissing, 502, 5, false},
	{"output_invalid", ErrOutputInvalid, 502, 5, false},
	{"output_too_large", ErrOutputTooLarge, 502, 5, false},
	{"timeout", ErrTimeout, 504, 6, false},
	{"memory_limit", ErrMemoryLimit, 507, 7, false},
	// The tier, not the tool, failed (a VMM killed, a state root full): 503, distinct from the
	// tool's own failures (502); another try may land on a healthy sandbox.
	{"sandbox_failed", ErrSandboxFailed, 503, 8, true},
	{"busy", ErrBusy, 429, 9, true},
	// A gateway lost the worker running the call: 502, the status of a gateway whose upstream
	// failed to answer. Not retryable, unlike sandbox_failed: the tool may have run (a side
	// effect done, a message sent), so only the caller knows whether to run it again; a
	// Retry-After would invite the blind retry at-most-once exists to avoid. Exit 10 keeps the
	// existing codes.
	{"worker_lost", ErrWorkerLost, 502, 10, false},
	// The caller's context ended: for HTTP the server shut down (a client that left reads nothing);
	// for the CLI a SIGINT or SIGTERM, 128+2 as a shell reports an interrupted command.
	{KindCanceled, nil, 503, 130, true},
	{KindInternal, nil, 500, 1, false},
}

// Outcomes returns the table: every outcome, ok first and internal last.
func Outcomes() []Outcome { return append([]Outcome(nil), outcomes[:]...) }

// Kinds returns the error classes, in the table's order.
func Kinds() []error {
	ks := make([]error, 0, len(outcomes))
	for _, o := range outcomes {
		if o.Class != nil {
			ks = append(ks, o.Class)
		}
	}
	return ks
}

// OutcomeOf returns the outcome of a call that returned err: ok for nil, the first class err
// matches with errors.Is, canceled for a context's error, internal for anything else.
func OutcomeOf(err error) Outcome {
	if err == nil {
		return outcomes[0]
	}
	for _, o := range outcomes[1:] {
		if o.Class != nil && errors.Is(err, o.Class) {
			return o
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return outcomes[len(outcomes)-2]
	}
	return outcomes[len(outcomes)-1]
}

// KindName returns the wire kind of err's outcome ("timeout", "tool_not_found", "canceled",
// "internal", ...).
func KindName(err error) string { return OutcomeOf(err).Kind }
