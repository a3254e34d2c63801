package executor

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/sandbox"
)

// flippingTier is a Wasm-tier sandbox whose availability the test sets, counting its probes.
type flippingTier struct {
	available atomic.Bool
	probes    atomic.Int64
}

func (f *flippingTier) Tier() isolation.Tier { return isolation.TierWasm }
func (f *flippingTier) Probe(context.Context) isolation.Availability {
	f.probes.Add(1)
	if f.available.Load() {
		return isolation.Availability{Available: true, Backend: "test"}
	}
	return isolation.Availability{Reason: "not yet", Fix: "wait"}
}
func (f *flippingTier) Supports(isolation.RuntimeRequirement) string { return "" }
func (f *flippingTier) Run(context.Context, sandbox.Call) (sandbox.Outcome, error) {
	return sandbox.Outcome{}, nil
}
func (f *flippingTier) Close() error { return nil }

// An unavailable tier is probed again once NegativeProbeTTL passed (a guest image prepared, a
// runtime installed while the server runs); an available one is not probed again.
func TestNegativeProbesExpire(t *testing.T) {
	cat, err := catalog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tier := &flippingTier{}
	e, err := New(Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{tier}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	e.clock = func() time.Time { return now }
	ctx := context.Background()
	if a := e.Availability(ctx, isolation.TierWasm); a.Available {
		t.Fatal("available before the tier was")
	}
	tier.available.Store(true)
	now = now.Add(NegativeProbeTTL / 2)
	if a := e.Availability(ctx, isolation.TierWasm); a.Available || tier.probes.Load() != 1 {
		t.Fatalf("within the TTL: available %v after %d probes, want the remembered answer after 1", a.Available, tier.probes.Load())
	}
	now = now.Add(NegativeProbeTTL)
	if a := e.Availability(ctx, isolation.TierWasm); !a.Available {
		t.Fatal("the tier became available but the executor still says it is not after the TTL")
	}
	tier.available.Store(false)
	now = now.Add(10 * NegativeProbeTTL)
	if a := e.Availability(ctx, isolation.TierWasm); !a.Available || tier.probes.Load() != 2 {
		t.Fatalf("an available tier was probed again (%d probes) or lost: %v", tier.probes.Load(), a)
	}
}
