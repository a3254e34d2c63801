package axoiso

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// A lazyTier stands for any tier, so it has every optional interface of package sandbox, each
// forwarding to the built sandbox or answering as a sandbox without it would.
var (
	_ sandbox.Setupper        = (*lazyTier)(nil)
	_ sandbox.Preparer        = (*lazyTier)(nil)
	_ sandbox.MemoryDefaulter = (*lazyTier)(nil)
	_ sandbox.Pooler          = (*lazyTier)(nil)
	_ sandbox.BaseSupporter   = (*lazyTier)(nil)
	_ sandbox.EgressSupporter = (*lazyTier)(nil)
	_ sandbox.Queuer          = (*lazyTier)(nil)
)

// lazyTier builds its sandbox on first use, so a process pays only for the tiers its calls touch
// (`axoiso run` of a Wasm tool never sets up containers or VMs). A tier that cannot be set up
// becomes a brokenTier, unavailable with the reason.
type lazyTier struct {
	tier  isolation.Tier
	build func() (sandbox.Sandbox, error)
	log   *slog.Logger

	mu     sync.Mutex // protects sb and closed; held while building, so concurrent first calls wait
	sb     sandbox.Sandbox
	closed bool
}

func (l *lazyTier) get() sandbox.Sandbox {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sb == nil {
		s, err := l.build()
		if l.closed {
			if err == nil {
				s.Close()
			}
			err = errClosed
		}
		if err != nil {
			l.log.Debug("tier not set up", "tier", l.tier.String(), "error", err)
			s = brokenTier{tier: l.tier, err: err}
		}
		l.sb = s
	}
	return l.sb
}

// built returns the sandbox if something built it, without building it.
func (l *lazyTier) built() sandbox.Sandbox {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb
}

func (l *lazyTier) Tier() isolation.Tier { return l.tier }

func (l *lazyTier) Probe(ctx context.Context) isolation.Availability { return l.get().Probe(ctx) }

func (l *lazyTier) Supports(req isolation.RuntimeRequirement) string {
	return l.get().Supports(req)
}

func (l *lazyTier) Run(ctx context.Context, c sandbox.Call) (sandbox.Outcome, error) {
	return l.get().Run(ctx, c)
}

// Setup and Prepare forward to the sandbox when it has them (sandbox.Setupper, sandbox.Preparer).
func (l *lazyTier) Setup(ctx context.Context, c sandbox.Call) error {
	if s, ok := l.get().(sandbox.Setupper); ok {
		return s.Setup(ctx, c)
	}
	return nil
}

func (l *lazyTier) Prepare(ctx context.Context, c sandbox.Call) error {
	if p, ok := l.get().(sandbox.Preparer); ok {
		return p.Prepare(ctx, c)
	}
	return nil
}

// SupportsBase forwards sandbox.BaseSupporter; a tier without it cannot run tools on a base
// image. Without this, no tool with "base" could run through New's executor.
func (l *lazyTier) SupportsBase(req isolation.RuntimeRequirement) string {
	if b, ok := l.get().(sandbox.BaseSupporter); ok {
		return b.SupportsBase(req)
	}
	return fmt.Sprintf("the %s tier cannot run a tool on a base image", l.tier)
}

// SupportsEgress forwards sandbox.EgressSupporter ("" for a tier without it).
func (l *lazyTier) SupportsEgress() string {
	if es, ok := l.get().(sandbox.EgressSupporter); ok {
		return es.SupportsEgress()
	}
	return ""
}

// QueuesCalls forwards sandbox.Queuer (false when the tier does not queue). Without this, the
// time a Wasm call waited for an instance slot counted against its own timeout.
func (l *lazyTier) QueuesCalls() bool {
	q, ok := l.get().(sandbox.Queuer)
	return ok && q.QueuesCalls()
}

// DefaultMemoryMB forwards sandbox.MemoryDefaulter (0: the tier has no default of its own).
func (l *lazyTier) DefaultMemoryMB() int {
	if d, ok := l.get().(sandbox.MemoryDefaulter); ok {
		return d.DefaultMemoryMB()
	}
	return 0
}

// PoolStats reports the pools of a built sandbox; an unbuilt one has none.
func (l *lazyTier) PoolStats() []sandbox.PoolStats {
	if p, ok := l.built().(sandbox.Pooler); ok {
		return p.PoolStats()
	}
	return nil
}

// Close closes the sandbox if it was built, and keeps it from being built later. Idempotent.
func (l *lazyTier) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	s := l.sb
	l.mu.Unlock()
	if s != nil {
		return s.Close()
	}
	return nil
}

var errClosed = errors.New("the executor is closed")
