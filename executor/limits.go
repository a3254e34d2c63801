package executor

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/sandbox"
)

// DefaultMaxTimeout is the timeout ceiling when Config.MaxTimeout is unset: a tool's timeout_ms
// (or a call's WithTimeout) above it gets it.
const DefaultMaxTimeout = 60 * time.Second

// DefaultMaxMemoryMB is the memory ceiling of tier t when Config.MaxMemoryMB does not name it:
// Wasmtime 256 MB (a Wasm instance's memory is this process's), Oci and Firecracker 1024 MB. The
// None tier runs trusted Go in this process and limits no memory: 0.
func DefaultMaxMemoryMB(t isolation.Tier) int {
	switch t {
	case isolation.TierWasm:
		return 256
	case isolation.TierOCI, isolation.TierMicroVM:
		return 1024
	}
	return 0
}

// maxWasmMemoryMB is all a 32-bit linear memory can address: a larger Wasm ceiling means nothing.
const maxWasmMemoryMB = 4096

// Limits are the limits a call ran under, after the operator's ceilings (the "limits" object of
// the result envelope).
type Limits struct {
	TimeoutMS int64 `json:"timeout_ms"`
	// MemoryMB is the memory limit; 0 when the tier limits no memory (None) or did not say what
	// its default is.
	MemoryMB       int   `json:"memory_mb"`
	MaxOutputBytes int64 `json:"max_output_bytes"`
	// Clamped lists what was asked for above a ceiling (by tool.json or the call's options):
	// the call got the ceiling instead. Empty when nothing was lowered.
	Clamped []Clamp `json:"clamped,omitempty"`
	// Egress is the call's effective network policy (patterns; absent: no network), and
	// EgressNotGranted what tool.json asked for that the operator's grants did not give, and why.
	Egress           []string            `json:"egress,omitempty"`
	EgressNotGranted []egress.NotGranted `json:"egress_not_granted,omitempty"`
}

// Clamp is one request lowered to its ceiling.
type Clamp struct {
	// Limit is the tool.json field: "timeout_ms" or "memory_mb".
	Limit   string `json:"limit"`
	Asked   int64  `json:"asked"`
	Granted int64  `json:"granted"`
}

// logAttrs are the limits in a call's log record (none for a call that failed before they were
// resolved: an unknown tool, an invalid input, no tier).
func (l Limits) logAttrs() []slog.Attr {
	if l.TimeoutMS == 0 && l.MaxOutputBytes == 0 {
		return nil
	}
	a := []slog.Attr{slog.Int64("timeout_ms", l.TimeoutMS), slog.Int("memory_mb", l.MemoryMB)}
	if len(l.Clamped) > 0 {
		a = append(a, slog.String("clamped", l.clampedString()))
	}
	if len(l.Egress) > 0 {
		a = append(a, slog.String("egress", strings.Join(l.Egress, " ")))
	}
	if len(l.EgressNotGranted) > 0 {
		ng := make([]string, len(l.EgressNotGranted))
		for i, n := range l.EgressNotGranted {
			ng[i] = n.Pattern + " (" + n.Reason + ")"
		}
		a = append(a, slog.String("egress_not_granted", strings.Join(ng, "; ")))
	}
	return a
}

// clampedString is "timeout_ms 3600000→60000, memory_mb 2048→256".
func (l Limits) clampedString() string {
	var b strings.Builder
	for i, c := range l.Clamped {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d→%d", c.Limit, c.Asked, c.Granted)
	}
	return b.String()
}

func (l Limits) clamped(limit string) (Clamp, bool) {
	for _, c := range l.Clamped {
		if c.Limit == limit {
			return c, true
		}
	}
	return Clamp{}, false
}

// ceilings checks and completes the limits of cfg (New's part): every value has its default,
// DefaultTimeout is at most MaxTimeout, and nothing is beyond what a tier can express.
func (cfg *Config) ceilings() error {
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = DefaultMaxTimeout
	}
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = sandbox.DefaultTimeout
	}
	cfg.DefaultTimeout = min(cfg.DefaultTimeout, cfg.MaxTimeout)
	if cfg.MaxOutputBytes <= 0 {
		cfg.MaxOutputBytes = sandbox.DefaultMaxOutputBytes
	}
	if cfg.MaxOutputBytes > sandbox.MaxOutputBytesLimit {
		return fmt.Errorf("executor: MaxOutputBytes %d is over the largest output any tier keeps, %d", cfg.MaxOutputBytes, sandbox.MaxOutputBytesLimit)
	}
	mem := make(map[isolation.Tier]int, len(isolation.Tiers()))
	for t, mb := range cfg.MaxMemoryMB {
		abs := sandbox.MaxMemoryMB
		switch t {
		case isolation.TierNone:
			return fmt.Errorf("executor: MaxMemoryMB names the %s tier, which runs in this process and limits no memory", t)
		case isolation.TierWasm:
			abs = maxWasmMemoryMB
		}
		if mb > abs {
			return fmt.Errorf("executor: MaxMemoryMB[%s] = %d is over the largest limit that tier can apply, %d", t, mb, abs)
		}
		if mb > 0 {
			mem[t] = mb
		}
	}
	for _, t := range isolation.Tiers() {
		if _, ok := mem[t]; !ok {
			if d := DefaultMaxMemoryMB(t); d > 0 {
				mem[t] = d
			}
		}
	}
	cfg.MaxMemoryMB = mem
	return nil
}

// limits resolves a call's limits in the tier that will run it: the tool's requests (tool.json,
// then the call's options) or the defaults, each lowered to the operator's ceiling for that tier.
// Every sandbox thus receives already-safe Limits; the report says what was lowered.
func (e *Executor) limits(tool *catalog.Tool, o callOptions, tier isolation.Tier) (sandbox.Limits, Limits) {
	var rep Limits
	ceil := e.cfg.MaxTimeout
	timeout := e.cfg.DefaultTimeout
	switch {
	case o.timeout > 0:
		timeout = o.timeout
		if timeout > ceil {
			rep.Clamped = append(rep.Clamped, Clamp{"timeout_ms", timeout.Milliseconds(), ceil.Milliseconds()})
			timeout = ceil
		}
	case tool.TimeoutMS > 0:
		// Compared in milliseconds: converting a huge timeout_ms to a Duration first overflows
		// int64 nanoseconds and wraps to a tiny (or negative) timeout.
		if tool.TimeoutMS > ceil.Milliseconds() {
			rep.Clamped = append(rep.Clamped, Clamp{"timeout_ms", tool.TimeoutMS, ceil.Milliseconds()})
			timeout = ceil
		} else {
			timeout = time.Duration(tool.TimeoutMS) * time.Millisecond
		}
	}

	mem := 0
	if mceil, ok := e.cfg.MaxMemoryMB[tier]; ok {
		mem = tool.MemoryMB
		if mem <= 0 {
			// The tier's default, so that the report says what the call gets and a default
			// configured above the ceiling is lowered too.
			if d, ok := e.sandboxes[tier].(sandbox.MemoryDefaulter); ok {
				mem = d.DefaultMemoryMB()
			}
		} else if mem > mceil {
			rep.Clamped = append(rep.Clamped, Clamp{"memory_mb", int64(mem), int64(mceil)})
		}
		mem = max(0, min(mem, mceil))
	}

	lim := sandbox.Limits{
		Timeout:        timeout,
		MemoryMB:       mem,
		MaxOutputBytes: e.cfg.MaxOutputBytes,
	}.WithDefaults()
	lim.Egress, rep.EgressNotGranted = e.Egress(tool)
	rep.Egress = lim.Egress.Strings()
	if len(rep.Egress) == 0 {
		rep.Egress = nil
	}
	rep.TimeoutMS = lim.Timeout.Milliseconds()
	rep.MemoryMB = lim.MemoryMB
	rep.MaxOutputBytes = lim.MaxOutputBytes
	return lim, rep
}

// explainTimeout adds to a timeout error that the timeout was the operator's ceiling, not what
// the tool asked for.
func explainTimeout(err error, rep Limits) {
	c, ok := rep.clamped("timeout_ms")
	if !ok {
		return
	}
	var ie *isolation.Error
	if errors.As(err, &ie) && ie.Kind == isolation.ErrTimeout {
		ie.Message += fmt.Sprintf(" (the ceiling; %d ms were asked for)", c.Asked)
	}
}

// EgressGrants are the operator's network grants: what tools may reach, of what they ask for in
// tool.json ("network": {"egress": [...]}). A call's policy is egress.Effective(asked, AllTools ∪
// Tools[tool], AllowPrivate): never more than asked, never more than granted, never the deny set
// unless AllowPrivate reopens part of it.
type EgressGrants struct {
	// AllTools are granted to every tool.
	AllTools []egress.Pattern
	// Tools are granted to the named tool only.
	Tools map[string][]egress.Pattern
	// AllowPrivate reopens these ranges of the deny set (the operator's allow_private).
	AllowPrivate []netip.Prefix
}

// Egress returns the effective network policy of a tool's calls and what of its request was not
// granted (the executor's configuration decides; the zero Policy: no network).
func (e *Executor) Egress(tool *catalog.Tool) (egress.Policy, []egress.NotGranted) {
	asked := tool.Network.Egress
	if len(asked) == 0 {
		return egress.Policy{}, nil
	}
	g := e.cfg.Egress
	granted := append(slices.Clip(g.AllTools), g.Tools[tool.Name]...)
	return egress.Effective(asked, granted, g.AllowPrivate)
}
