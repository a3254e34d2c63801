package axoiso

import (
	"context"
	"errors"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

func TestTiersAreSetUpOnFirstUse(t *testing.T) {
	c := testConfig(t)
	c.ToolsRoot = t.TempDir()
	sbs, err := sandboxes(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(sbs) != 4 {
		t.Fatalf("%d sandboxes, want one per tier", len(sbs))
	}
	lazy := map[isolation.Tier]*lazyTier{}
	for _, s := range sbs {
		if l, ok := s.(*lazyTier); ok {
			lazy[l.tier] = l
		}
	}
	for _, tier := range []isolation.Tier{isolation.TierWasm, isolation.TierOCI, isolation.TierMicroVM} {
		if lazy[tier] == nil || lazy[tier].built() != nil {
			t.Fatalf("tier %s is not lazy or was built before use", tier)
		}
	}
	if a := lazy[isolation.TierWasm].Probe(context.Background()); !a.Available {
		t.Fatalf("Wasmtime: %+v", a)
	}
	if lazy[isolation.TierWasm].built() == nil || lazy[isolation.TierOCI].built() != nil || lazy[isolation.TierMicroVM].built() != nil {
		t.Fatal("probing Wasmtime built other tiers, or not Wasmtime itself")
	}
	if ps := lazy[isolation.TierOCI].PoolStats(); ps != nil || lazy[isolation.TierOCI].built() != nil {
		t.Fatal("reading pool stats built the Oci tier")
	}
	for _, s := range sbs {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	// A tier first used after Close is unavailable, not set up.
	if a := lazy[isolation.TierOCI].Probe(context.Background()); a.Available {
		t.Fatalf("Oci after Close: %+v", a)
	}
	_, err = lazy[isolation.TierOCI].Run(context.Background(), sandboxCall())
	if !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Fatalf("Run after Close: %v", err)
	}
}

func TestDisabledTiersAreLeftOut(t *testing.T) {
	c := testConfig(t)
	c.ToolsRoot, c.DisableTiers = t.TempDir(), []string{"Oci", "Firecracker"}
	sbs, err := sandboxes(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sbs {
		if s.Tier() == isolation.TierOCI || s.Tier() == isolation.TierMicroVM {
			t.Fatalf("disabled tier %s is present", s.Tier())
		}
	}
}

func sandboxCall() sandbox.Call { return sandbox.Call{Tool: "x", Dir: "/nonexistent"} }

// TestLazyTierForwardsOptionalInterfaces: the executor sees every tier through a lazyTier, so
// an optional interface it does not forward is lost in every program built on New: a Wasm call's
// queueing counted against its timeout, and no tool with a base image could run. The test looks
// at the tiers as the executor does, through type assertions on sandbox.Sandbox.
func TestLazyTierForwardsOptionalInterfaces(t *testing.T) {
	c := testConfig(t)
	c.ToolsRoot = t.TempDir()
	sbs, err := sandboxes(c)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, s := range sbs {
			s.Close()
		}
	}()
	for _, s := range sbs {
		l, ok := s.(*lazyTier)
		if !ok {
			continue
		}
		q, queuer := s.(sandbox.Queuer)
		b, baser := s.(sandbox.BaseSupporter)
		switch l.tier {
		case isolation.TierWasm:
			if !queuer || !q.QueuesCalls() {
				t.Error("Wasmtime queues its calls; through the lazy tier it does not say so")
			}
			if baser && b.SupportsBase(isolation.RequireShell) == "" {
				t.Error("Wasmtime cannot run a tool on a base image; the lazy tier says it can")
			}
		case isolation.TierOCI:
			if queuer && q.QueuesCalls() {
				t.Error("Oci does not queue calls")
			}
			inner, ok := l.get().(sandbox.BaseSupporter)
			if !ok {
				t.Fatal("the Oci tier runs tools on base images (sandbox.BaseSupporter)")
			}
			if !baser || b.SupportsBase(isolation.RequireShell) != inner.SupportsBase(isolation.RequireShell) {
				t.Error("Oci's SupportsBase is not forwarded by the lazy tier")
			}
		}
	}
}
