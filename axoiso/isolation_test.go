package axoiso

import (
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
)

// The isolation choice is checked when the executor is built: a tier that cannot run the
// requirement, a tool key that is not a tool name, are config errors naming the key.
func TestIsolationChoiceErrors(t *testing.T) {
	fc := isolation.TierMicroVM
	for _, tc := range []struct {
		name  string
		c     Config
		error string
	}{
		{"wasm in a VM", Config{Isolation: map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireWasm: fc}}, "isolation: WasmCompiled tools cannot run in Firecracker"},
		{"image in wasm", Config{Isolation: map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: isolation.TierWasm}}, "ContainerImage tools cannot run in Wasmtime"},
		{"tool path", Config{ToolIsolation: map[string]isolation.Tier{"../x": fc}}, "tool_isolation"},
		{"tool in None", Config{ToolIsolation: map[string]isolation.Tier{"x": isolation.TierNone}}, "tool_isolation: x: choose Oci or Firecracker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.ToolsRoot = t.TempDir()
			e, err := New(tc.c)
			if err == nil {
				e.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.error) {
				t.Errorf("err = %v, want %q", err, tc.error)
			}
		})
	}
	c := Config{ToolsRoot: t.TempDir(), Isolation: map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: fc, isolation.RequirePython: isolation.TierOCI},
		ToolIsolation: map[string]isolation.Tier{"my-tool": fc}}
	e, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}
