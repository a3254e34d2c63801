package wasm_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
	"github.com/axocoatl/isolation/sandbox/wasm/internal/wasmbin"
)

// copyTools copies the example tool folders (sources and tool.json, not built modules) to a
// temporary tools root, so the test never writes into the repository.
func copyTools(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "examples", "tools")
	dst := t.TempDir()
	for _, name := range []string{"hello-wasm", "wordcount"} {
		if err := os.MkdirAll(filepath.Join(dst, name), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"main.go", "tool.json"} {
			b, err := os.ReadFile(filepath.Join(src, name, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, name, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

// TestExamplesThroughExecutor builds the example tools and runs them the way the CLI does:
// catalog → executor → Wasm sandbox.
func TestExamplesThroughExecutor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := copyTools(t)
	built, err := wasmbuild.BuildExamples(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(built) != 2 || !built[0].Rebuilt {
		t.Fatalf("built %+v", built)
	}
	if again, err := wasmbuild.BuildExamples(ctx, root); err != nil || again[0].Rebuilt || again[1].Rebuilt {
		t.Fatalf("second build rebuilt up-to-date modules: %+v %v", again, err)
	}
	// hello-wasm is the reactor (snapshot mode), wordcount the plain command.
	for _, b := range built {
		bin, err := os.ReadFile(b.Module)
		if err != nil {
			t.Fatal(err)
		}
		reactor, err := wasmbin.IsReactor(bin)
		if err != nil || reactor != (b.Tool == "hello-wasm") {
			t.Errorf("%s: reactor %v (%v)", b.Tool, reactor, err)
		}
	}
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := wasm.New(wasm.Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{sb}})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()

	tests := []struct {
		tool, input, want string
		wantErr           error
	}{
		{tool: "hello-wasm", input: `{"name":"x"}`, want: `{"greeting":"Hello, x!"}`},
		{tool: "hello-wasm", input: `{"nom":"x"}`, wantErr: isolation.ErrInvalidInput},
		{tool: "wordcount", input: `{"text":"the cat and the hat\nthe end\n","top":2}`,
			want: `{"lines":2,"words":7,"chars":28,"top":[{"word":"the","count":3},{"word":"and","count":1}]}`},
	}
	for _, tt := range tests {
		res, err := ex.Execute(ctx, tt.tool, []byte(tt.input))
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%s %s: want %v, got %v", tt.tool, tt.input, tt.wantErr, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tt.tool, err)
		}
		if mustCanon(t, string(res.Output)) != mustCanon(t, tt.want) {
			t.Errorf("%s: output %s, want %s", tt.tool, res.Output, tt.want)
		}
		if res.Tier != isolation.TierWasm || res.Degraded || res.Backend != wasm.Backend {
			t.Errorf("%s: ran in %s (degraded %v, backend %q)", tt.tool, res.Tier, res.Degraded, res.Backend)
		}
	}
}

func mustCanon(t *testing.T, s string) string {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}
