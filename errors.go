package isolation

import (
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
)

// Kinds lists the error classes in a stable order.
var Kinds = []error{
	ErrInvalidToolName, ErrInvalidInput, ErrToolNotFound, ErrTierUnavailable, ErrDowngradeRefused,
	ErrToolFailed, ErrOutputMissing, ErrOutputInvalid, ErrOutputTooLarge, ErrTimeout, ErrMemoryLimit,
	ErrInvalidTool, ErrSandboxFailed, ErrBusy,
}

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
	// Stderr is a bounded tail of what the tool wrote on stderr.
	Stderr string
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

// KindName returns the snake_case name of err's class ("timeout", "tool_not_found", ...), or
// "internal" when err matches none.
func KindName(err error) string {
	for _, k := range []error{ErrDowngradeRefused, ErrInvalidToolName, ErrInvalidInput, ErrToolNotFound,
		ErrTierUnavailable, ErrToolFailed, ErrOutputMissing, ErrOutputInvalid, ErrOutputTooLarge,
		ErrTimeout, ErrMemoryLimit, ErrInvalidTool, ErrSandboxFailed, ErrBusy} {
		if errors.Is(err, k) {
			return strings.ReplaceAll(k.Error(), " ", "_")
		}
	}
	return "internal"
}
