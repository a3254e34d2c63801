package executor_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
)

// fakeTier stands for a tier: available or not, running every call it supports with {} and
// recording it.
type fakeTier struct {
	tier  isolation.Tier
	avail bool

	mu  sync.Mutex // protects got
	got []sandbox.Call
}

func (f *fakeTier) Tier() isolation.Tier { return f.tier }
func (f *fakeTier) Probe(context.Context) isolation.Availability {
	if !f.avail {
		return isolation.Availability{Reason: "switched off"}
	}
	return isolation.Availability{Available: true, Backend: "fake"}
}
func (f *fakeTier) Supports(req isolation.RuntimeRequirement) string {
	if req == isolation.RequireContainerImage || req == isolation.RequireShell {
		return ""
	}
	return "not this one"
}
func (f *fakeTier) Run(_ context.Context, c sandbox.Call) (sandbox.Outcome, error) {
	f.mu.Lock()
	f.got = append(f.got, c)
	f.mu.Unlock()
	return sandbox.Outcome{Output: []byte(`{}`)}, nil
}
func (f *fakeTier) Close() error { return nil }

// baseTier is a fakeTier that runs tools on base images.
type baseTier struct{ fakeTier }

func (b *baseTier) SupportsBase(isolation.RuntimeRequirement) string { return "" }

func isolationCatalog(t *testing.T) *catalog.Catalog {
	t.Helper()
	root := t.TempDir()
	for _, b := range []string{"img", "other-img"} {
		os.MkdirAll(filepath.Join(root, b, "rootfs"), 0o755)
		os.WriteFile(filepath.Join(root, b, "config.json"), []byte(`{}`), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "on-base"), 0o755)
	os.WriteFile(filepath.Join(root, "on-base/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"main.sh","base":"img"}`), 0o644)
	os.WriteFile(filepath.Join(root, "on-base/main.sh"), []byte("exit 0"), 0o644)
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The operator's isolation choice: ContainerImage tools in Firecracker, per requirement or per
// tool; the envelope says where the call ran, its ideal tier (the chosen one) and whether that
// is a downgrade. Without a choice, ContainerImage falls back from Oci to Firecracker, which is
// not a downgrade.
func TestIsolationChoice(t *testing.T) {
	fc, oci := isolation.TierMicroVM, isolation.TierOCI
	for _, tc := range []struct {
		name                string
		iso                 map[isolation.RuntimeRequirement]isolation.Tier
		tools               map[string]isolation.Tier
		ociUp, vmUp, strict bool
		tool                string
		tier, ideal         isolation.Tier
		degraded            bool
		err                 error
	}{
		{"default", nil, nil, true, true, false, "img", oci, oci, false, nil},
		{"default, no Oci: the VM, not a downgrade", nil, nil, false, true, true, "img", fc, oci, false, nil},
		{"ContainerImage → Firecracker", map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: fc}, nil, true, true, true, "img", fc, fc, false, nil},
		{"ContainerImage → Firecracker, no VMM: a downgrade", map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: fc}, nil, true, false, false, "img", oci, fc, true, nil},
		{"ContainerImage → Firecracker, no VMM, strict", map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: fc}, nil, true, false, true, "img", 0, 0, false, isolation.ErrDowngradeRefused},
		{"per tool", nil, map[string]isolation.Tier{"img": fc}, true, true, false, "img", fc, fc, false, nil},
		{"per tool, another tool keeps the default", nil, map[string]isolation.Tier{"img": fc}, true, true, false, "other-img", oci, oci, false, nil},
		{"per tool wins", map[isolation.RuntimeRequirement]isolation.Tier{isolation.RequireContainerImage: fc}, map[string]isolation.Tier{"img": oci}, true, true, false, "img", oci, oci, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &fakeTier{tier: oci, avail: tc.ociUp}
			v := &fakeTier{tier: fc, avail: tc.vmUp}
			e, err := executor.New(executor.Config{Catalog: isolationCatalog(t), Sandboxes: []sandbox.Sandbox{o, v},
				Strict: tc.strict, Isolation: tc.iso, ToolIsolation: tc.tools})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			res, err := e.Execute(context.Background(), tc.tool, []byte(`{}`))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Tier != tc.tier || res.Ideal != tc.ideal || res.Degraded != tc.degraded {
				t.Fatalf("tier %s ideal %s degraded %v; want %s %s %v", res.Tier, res.Ideal, res.Degraded, tc.tier, tc.ideal, tc.degraded)
			}
		})
	}
}

// A tool that names a base runs only in a tier that runs tools on base images, and the call
// carries the base's folder.
func TestBaseSelectsTiersThatRunBases(t *testing.T) {
	c := isolationCatalog(t)
	plain := &fakeTier{tier: isolation.TierMicroVM, avail: true}
	e, err := executor.New(executor.Config{Catalog: c, Sandboxes: []sandbox.Sandbox{plain}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Execute(context.Background(), "on-base", []byte(`{}`)); !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Fatalf("a tier without bases: err = %v, want tier unavailable", err)
	}
	e.Close()
	b := &baseTier{fakeTier{tier: isolation.TierOCI, avail: true}}
	e, err = executor.New(executor.Config{Catalog: c, Sandboxes: []sandbox.Sandbox{b}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	res, err := e.Execute(context.Background(), "on-base", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if res.Tier != isolation.TierOCI || !res.Degraded {
		t.Errorf("tier %s degraded %v, want Oci (a downgrade from Firecracker)", res.Tier, res.Degraded)
	}
	if len(b.got) != 1 || b.got[0].Base != filepath.Join(c.Root(), "img") {
		t.Errorf("calls %+v, want one with the base's folder", b.got)
	}
}

// noNetTier is a fakeTier that cannot enforce network policies here.
type noNetTier struct{ fakeTier }

func (n *noNetTier) SupportsEgress() string { return "no network device in this tier" }

// A tool with a network policy runs only in a tier that can enforce it: a tier that says it
// cannot (sandbox.EgressSupporter) is passed over like one without the runtime, and the same
// tool without a grant (no policy) still runs there.
func TestEgressSelectsTiersThatEnforceIt(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "fetch"), 0o755)
	os.WriteFile(filepath.Join(root, "fetch/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"main.sh","network":{"egress":["api.example.com:443"]}}`), 0o644)
	os.WriteFile(filepath.Join(root, "fetch/main.sh"), []byte("exit 0"), 0o644)
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := egress.ParsePatterns([]string{"api.example.com:443"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		grant   bool
		want    isolation.Tier
		wantErr error
	}{
		{"granted: the enforcing tier", true, isolation.TierOCI, nil},
		{"not granted: no policy, the ideal tier", false, isolation.TierMicroVM, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := &noNetTier{fakeTier{tier: isolation.TierMicroVM, avail: true}}
			oci := &fakeTier{tier: isolation.TierOCI, avail: true}
			cfg := executor.Config{Catalog: c, Sandboxes: []sandbox.Sandbox{vm, oci}}
			if tc.grant {
				cfg.Egress.AllTools = ps
			}
			e, err := executor.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			res, err := e.Execute(context.Background(), "fetch", []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			if res.Tier != tc.want {
				t.Fatalf("ran in %s, want %s", res.Tier, tc.want)
			}
		})
	}
	// Only a tier that cannot enforce it: refused, saying why.
	vm := &noNetTier{fakeTier{tier: isolation.TierMicroVM, avail: true}}
	e, err := executor.New(executor.Config{Catalog: c, Sandboxes: []sandbox.Sandbox{vm}, Egress: executor.EgressGrants{AllTools: ps}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Execute(context.Background(), "fetch", []byte(`{}`)); !errors.Is(err, isolation.ErrTierUnavailable) || !strings.Contains(err.Error(), "no network device") {
		t.Fatalf("err = %v, want tier unavailable saying why", err)
	}
}
