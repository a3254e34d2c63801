package executor

import (
	"testing"

	"github.com/axocoatl/isolation"
)

// TestNewCopiesConfig: New copies its Config, maps included, so the caller's later changes have
// no effect.
func TestNewCopiesConfig(t *testing.T) {
	iso := map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: isolation.TierMicroVM}
	tools := map[string]isolation.Tier{"t": isolation.TierOCI}
	secrets := map[string]map[string]string{"t": {"KEY": "v"}}
	mem := map[isolation.Tier]int{isolation.TierOCI: 512}
	e, err := New(Config{Isolation: iso, ToolIsolation: tools, Secrets: secrets, MaxMemoryMB: mem})
	if err != nil {
		t.Fatal(err)
	}
	iso[isolation.RequireContainerImage] = isolation.TierOCI
	tools["t"] = isolation.TierMicroVM
	secrets["t"]["KEY"] = "changed"
	secrets["u"] = map[string]string{"K": "x"}
	mem[isolation.TierOCI] = 1
	if e.cfg.Isolation[isolation.RequireContainerImage] != isolation.TierMicroVM || e.cfg.ToolIsolation["t"] != isolation.TierOCI ||
		e.cfg.Secrets["t"]["KEY"] != "v" || len(e.cfg.Secrets) != 1 || e.cfg.MaxMemoryMB[isolation.TierOCI] != 512 {
		t.Fatalf("the executor's config changed with the caller's maps: %+v", e.cfg)
	}
}
