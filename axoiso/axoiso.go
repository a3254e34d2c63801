// Package axoiso builds an executor with every tier this build knows from one Config: the
// composition root shared by the CLI, the HTTP server and the MCP server, and the entry point of
// programs that embed the layer.
package axoiso

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
)

// New builds the executor. The tools root must exist.
func New(c Config) (*executor.Executor, error) {
	c = c.WithDefaults()
	log := c.Logger
	cat, err := catalog.Open(c.ToolsRoot)
	if err != nil {
		return nil, fmt.Errorf("%w (set --tools, %s or tools_root in the config)", err, EnvTools)
	}
	sbs := Sandboxes(c)
	e, err := executor.New(executor.Config{
		Catalog:        cat,
		Sandboxes:      sbs,
		Strict:         c.Strict,
		MaxOutputBytes: c.MaxOutputBytes,
		DefaultTimeout: time.Duration(c.DefaultTimeout),
		MaxTimeout:     time.Duration(c.MaxTimeout),
		MaxMemoryMB:    c.MaxMemoryMB,
		Logger:         log,
	})
	if err != nil {
		for _, s := range sbs {
			s.Close()
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return e, nil
}

// Sandboxes returns one sandbox per tier that is not disabled; the isolating tiers are set up on
// first use. The caller closes them.
//
// Before anything else it reaps, in every tier whether or not this process will use it, what
// processes that died without closing their sandboxes left under c's directories (containers,
// VMs, their processes, cgroups, mounts, state and run dirs) and their keepers could not reap.
// When there is nothing to reap this costs a few system calls per tier.
func Sandboxes(c Config) []sandbox.Sandbox {
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
	add := func(s sandbox.Sandbox) {
		if disabled[s.Tier().String()] {
			s.Close()
			return
		}
		sbs = append(sbs, s)
	}
	add(native.NewWithBuiltins())
	for _, b := range tierBuilders {
		add(&lazyTier{tier: b.tier, build: func() (sandbox.Sandbox, error) { return b.build(c, log) }, log: log})
	}
	return sbs
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
