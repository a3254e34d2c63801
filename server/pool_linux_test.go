package server

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/oci"
)

// TestRealContainersPoolsAndDowngrades serves real containers: a warm pool shows in /metrics, and
// a Shell tool whose only available tier is a weaker one (Oci on a runtime root, no microVM tier
// configured) is a real downgrade: reported in the envelope and counted, and refused with 409
// under ?strict=1.
func TestRealContainersPoolsAndDowngrades(t *testing.T) {
	testutil.RequiresRoot(t, "containers")
	// A runtime root of busybox, and a Shell tool that upper-cases its input.
	rt := t.TempDir()
	testutil.BusyboxTree(t, rt, "sh", "tr")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "upper"), 0o755)
	os.WriteFile(filepath.Join(root, "upper/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"run.sh"}`), 0o644)
	os.WriteFile(filepath.Join(root, "upper/run.sh"), []byte("tr a-z A-Z < /axocoatl/input.json > /axocoatl/output.json\n"), 0o644)

	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := oci.New(oci.Config{StateRoot: t.TempDir(), BundleRoot: root, RuntimeRoot: rt, PoolSize: 2,
		CgroupParent: "axocoatl-servertest"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.RequiresAvailable(t, ctr)
	exec, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.New(), ctr}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Executor: exec})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer func() { ts.Close(); s.Close() }()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := exec.Prepare(ctx, "upper"); err != nil {
		t.Fatal(err)
	}
	_, metrics := do(t, "GET", ts.URL+"/metrics", "", nil)
	for _, want := range []string{`axoiso_pool_size{tier="Oci",tool="upper"} 2`, `axoiso_pool_ready{tier="Oci",tool="upper"} 2`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	resp, body := do(t, "POST", ts.URL+"/v1/tools/upper/execute?envelope=1", `{"a":"b"}`, nil)
	var env struct {
		Output   map[string]string
		Tier     isolation.Tier
		Degraded bool
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &env) != nil || env.Output["A"] != "B" || env.Tier != isolation.TierOCI || !env.Degraded {
		t.Fatalf("downgraded call: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", ts.URL+"/v1/tools/upper/execute?strict=1", `{}`, nil)
	var e errorDoc
	json.Unmarshal(body, &e)
	if resp.StatusCode != 409 || e.Error.Kind != "downgrade_refused" {
		t.Fatalf("strict call: %d %s", resp.StatusCode, body)
	}
	_, metrics = do(t, "GET", ts.URL+"/metrics", "", nil)
	if !strings.Contains(string(metrics), `axoiso_downgrades_total{ideal="Firecracker",tier="Oci",tool="upper"} 1`) {
		t.Errorf("/metrics has no downgrade counter:\n%s", metrics)
	}
}
