// Package wire is the fleet's protocol on NATS: subjects, headers and the messages a worker sends
// back to a gateway. Subject tokens are built from names that arrive from tool folders and
// callers, so every token is checked here: nothing may inject a '.', '*', '>' or whitespace.
package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
)

// Subject roots.
const (
	// Prefix is the root of every fleet subject; v1 is the protocol version.
	Prefix = "axoiso.v1"
	// RunPrefix + <tier>.<tool>.<digest>: a call (queue group QueueGroup).
	RunPrefix = Prefix + ".run."
	// CancelPrefix + <call id>: cancel that call, wherever it runs. Every worker subscribes to
	// CancelWildcard (cancels are rare: a client gone, a deadline passed, an attempt abandoned).
	CancelPrefix   = Prefix + ".cancel."
	CancelWildcard = CancelPrefix + "*"
	// DirectPrefix + <worker id>.<tier>.<tool>.<digest>: a call sent to one worker, bypassing
	// the queue group (a gateway's retry after a worker stayed silent: the queue group could pick
	// the silent one again until the servers notice it is gone).
	DirectPrefix = Prefix + ".direct."
	// QueueGroup is the queue group of every worker's run subscriptions.
	QueueGroup = "axoiso-worker"
	// ServiceName is the micro service every worker registers.
	ServiceName = "axoiso-worker"
)

// Request headers (gateway → worker). The body is the tool's JSON input unchanged, or empty when
// InputRef names it in the inputs Object Store bucket.
const (
	HCallID  = "Axoiso-Call-Id"
	HDigest  = "Axoiso-Tool-Digest"
	HAttempt = "Axoiso-Attempt"
	// HDeadline is the call's absolute deadline (Unix ms); HAcceptBy the time (Unix ms) after
	// which the worker must not start it, because the gateway has given up on this attempt.
	// Both compare clocks across hosts: run NTP.
	HDeadline = "Axoiso-Deadline"
	HAcceptBy = "Axoiso-Accept-By"
	// HTimeout is the call's own timeout (a Go duration), when the caller set one.
	HTimeout = "Axoiso-Timeout"
	// HInputRef names an input stored in the inputs bucket (inputs over InlineInputMax).
	HInputRef    = "Axoiso-Input-Ref"
	HTraceparent = "traceparent"
	HTracestate  = "tracestate"
)

// Reply headers (worker → the gateway's inbox).
const (
	// HReply is the reply's kind: ReplyAccepted, ReplyHeartbeat, ReplyBusy or ReplyDone.
	HReply = "Axoiso-Reply"
	// HWorker is the answering worker's id.
	HWorker = "Axoiso-Worker"
)

// Reply kinds.
const (
	ReplyAccepted  = "accepted"
	ReplyHeartbeat = "hb"
	ReplyBusy      = "busy"
	ReplyDone      = "done"
)

// InlineInputMax is the largest input sent in the request itself; larger inputs travel by
// Object Store reference (NATS's default max_payload is 1 MiB, and headers need room).
const InlineInputMax = 1<<20 - 8<<10

// TierToken is a tier's subject token: its wire name (a fixed set, nothing to escape).
func TierToken(t isolation.Tier) (string, error) {
	b, err := t.MarshalText()
	return string(b), err
}

// ToolToken is a tool name's subject token: the catalog's names allow '.', which separates NATS
// tokens, so '.' becomes '~' (which no tool name contains). Anything that is not a valid tool name
// is refused.
func ToolToken(name string) (string, error) {
	if err := catalog.ValidateName(name); err != nil {
		return "", err
	}
	return strings.ReplaceAll(name, ".", "~"), nil
}

// ParseToolToken is ToolToken's inverse.
func ParseToolToken(tok string) (string, error) {
	if strings.Contains(tok, ".") {
		return "", fmt.Errorf("tool token %q contains '.'", tok)
	}
	name := strings.ReplaceAll(tok, "~", ".")
	if err := catalog.ValidateName(name); err != nil {
		return "", err
	}
	return name, nil
}

// ValidDigest: 64 lowercase hex digits (SHA-256).
func ValidDigest(d string) bool {
	if len(d) != 64 {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidCallID: 1–64 of [A-Za-z0-9_-] (a UUID, or a caller's own id of that shape).
func ValidCallID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// ErrBadToken: a name that cannot be a subject token.
var ErrBadToken = errors.New("invalid subject token")

// RunSubject is axoiso.v1.run.<tier>.<tool>.<digest>.
func RunSubject(t isolation.Tier, tool, digest string) (string, error) {
	tt, err := TierToken(t)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	tk, err := ToolToken(tool)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	if !ValidDigest(digest) {
		return "", fmt.Errorf("%w: digest %q is not 64 lowercase hex digits", ErrBadToken, truncate(digest))
	}
	return RunPrefix + tt + "." + tk + "." + digest, nil
}

// ParseRunSubject splits a run subject into its tier, tool name and digest.
func ParseRunSubject(s string) (isolation.Tier, string, string, error) {
	rest, ok := strings.CutPrefix(s, RunPrefix)
	if !ok {
		return 0, "", "", fmt.Errorf("%w: %q is not a run subject", ErrBadToken, truncate(s))
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return 0, "", "", fmt.Errorf("%w: %q has %d tokens after %s, want 3", ErrBadToken, truncate(s), len(parts), RunPrefix)
	}
	t, err := isolation.ParseTier(parts[0])
	if err != nil {
		return 0, "", "", fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	name, err := ParseToolToken(parts[1])
	if err != nil {
		return 0, "", "", fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	if !ValidDigest(parts[2]) {
		return 0, "", "", fmt.Errorf("%w: digest %q", ErrBadToken, truncate(parts[2]))
	}
	return t, name, parts[2], nil
}

// DirectSubject is the direct form of a run subject for worker id.
func DirectSubject(workerID, runSubject string) (string, error) {
	rest, ok := strings.CutPrefix(runSubject, RunPrefix)
	if !ok || !ValidCallID(workerID) {
		return "", fmt.Errorf("%w: direct subject for worker %q", ErrBadToken, truncate(workerID))
	}
	return DirectPrefix + workerID + "." + rest, nil
}

// RunSubjectOfDirect is the run subject a direct subject addresses, for worker id.
func RunSubjectOfDirect(workerID, direct string) (string, bool) {
	rest, ok := strings.CutPrefix(direct, DirectPrefix+workerID+".")
	if !ok {
		return "", false
	}
	return RunPrefix + rest, true
}

// CancelSubject is axoiso.v1.cancel.<call id>.
func CancelSubject(callID string) (string, error) {
	if !ValidCallID(callID) {
		return "", fmt.Errorf("%w: call id %q", ErrBadToken, truncate(callID))
	}
	return CancelPrefix + callID, nil
}

// Done is the body of a ReplyDone: the call's result or its error, never both.
type Done struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is an *isolation.Error on the wire.
type Error struct {
	Kind     string `json:"kind"`
	Message  string `json:"message"`
	Tier     string `json:"tier,omitempty"`
	ExitCode int    `json:"exit_code,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
}

// EncodeError is err on the wire: its outcome kind and its message.
func EncodeError(err error) *Error {
	we := &Error{Kind: isolation.KindName(err), Message: err.Error()}
	var ie *isolation.Error
	if errors.As(err, &ie) {
		we.Message, we.ExitCode, we.Stderr = ie.Message, ie.ExitCode, ie.Stderr
		if ie.Message == "" && ie.Err != nil {
			we.Message = ie.Err.Error()
		}
		if ie.HasTier {
			we.Tier = ie.Tier.String()
		}
	}
	return we
}

// Decode is the error a gateway returns for a worker's wire error: an *isolation.Error of the
// kind's class (or, for canceled and internal, an error that OutcomeOf classifies the same way).
func (we *Error) Decode(tool string) error {
	for _, o := range isolation.Outcomes() {
		if o.Kind != we.Kind || o.Class == nil {
			continue
		}
		ie := &isolation.Error{Kind: o.Class, Tool: tool, Message: we.Message, ExitCode: we.ExitCode, Stderr: we.Stderr}
		if t, err := isolation.ParseTier(we.Tier); err == nil && we.Tier != "" {
			ie.Tier, ie.HasTier = t, true
		}
		return ie
	}
	if we.Kind == isolation.KindCanceled {
		return fmt.Errorf("tool %q: worker: %s: %w", tool, we.Message, context.Canceled)
	}
	return fmt.Errorf("tool %q: worker: %s", tool, we.Message)
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
