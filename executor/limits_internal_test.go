package executor

import (
	"math"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/sandbox"
)

// Values that overflow a conversion (ms → ns, MB → bytes) get the ceiling: they never wrap to a
// tiny timeout or to no memory limit. The tools are built directly, as a library caller (or a
// catalog that let such a value through) would hand them over.
func TestOverflowingRequestsGetTheCeiling(t *testing.T) {
	cat, err := catalog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		tool      catalog.Tool
		opts      callOptions
		tier      isolation.Tier
		timeout   time.Duration
		memoryMB  int
		clampedTo []string
	}{
		// 18446744073710 ms × 10^6 wraps int64 nanoseconds to ~0.4 ms.
		{"timeout_ms wrapping to 0.4 ms", catalog.Tool{Manifest: catalog.Manifest{TimeoutMS: 18446744073710}}, callOptions{}, isolation.TierNone, 60 * time.Second, 0, []string{"timeout_ms"}},
		{"largest timeout_ms", catalog.Tool{Manifest: catalog.Manifest{TimeoutMS: math.MaxInt64}}, callOptions{}, isolation.TierWasm, 60 * time.Second, 0, []string{"timeout_ms"}},
		{"largest WithTimeout", catalog.Tool{}, callOptions{timeout: math.MaxInt64}, isolation.TierOCI, 60 * time.Second, 0, []string{"timeout_ms"}},
		// 2^44 MB is 2^64 bytes: 0, "no limit" to a container runtime.
		{"memory_mb wrapping to 0 bytes", catalog.Tool{Manifest: catalog.Manifest{MemoryMB: 17592186044416}}, callOptions{}, isolation.TierOCI, sandbox.DefaultTimeout, 1024, []string{"memory_mb"}},
		// 2^43 MB is 2^63 bytes: negative.
		{"memory_mb wrapping negative", catalog.Tool{Manifest: catalog.Manifest{MemoryMB: 8796093022208}}, callOptions{}, isolation.TierMicroVM, sandbox.DefaultTimeout, 1024, []string{"memory_mb"}},
		{"largest memory_mb in Wasm", catalog.Tool{Manifest: catalog.Manifest{MemoryMB: math.MaxInt}}, callOptions{}, isolation.TierWasm, sandbox.DefaultTimeout, 256, []string{"memory_mb"}},
		{"both", catalog.Tool{Manifest: catalog.Manifest{MemoryMB: math.MaxInt, TimeoutMS: math.MaxInt64}}, callOptions{}, isolation.TierOCI, 60 * time.Second, 1024, []string{"timeout_ms", "memory_mb"}},
		// The None tier limits no memory: nothing is applied, nothing reported as granted.
		{"memory_mb in the None tier", catalog.Tool{Manifest: catalog.Manifest{MemoryMB: math.MaxInt}}, callOptions{}, isolation.TierNone, sandbox.DefaultTimeout, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim, rep := e.limits(&tt.tool, tt.opts, tt.tier)
			if lim.Timeout != tt.timeout || lim.MemoryMB != tt.memoryMB {
				t.Fatalf("limits %+v, want timeout %s and %d MB", lim, tt.timeout, tt.memoryMB)
			}
			if rep.TimeoutMS != tt.timeout.Milliseconds() || rep.MemoryMB != tt.memoryMB {
				t.Fatalf("report %+v does not match the limits applied %+v", rep, lim)
			}
			var names []string
			for _, c := range rep.Clamped {
				names = append(names, c.Limit)
				if c.Granted >= c.Asked || c.Granted <= 0 {
					t.Errorf("clamp %+v: granted must be positive and below asked", c)
				}
			}
			if len(names) != len(tt.clampedTo) || (len(names) > 0 && names[0] != tt.clampedTo[0]) {
				t.Fatalf("clamped %v, want %v", names, tt.clampedTo)
			}
		})
	}
}

// The defaults hold for a library caller that sets nothing: no entry point can miss them.
func TestCeilingDefaults(t *testing.T) {
	cat, err := catalog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Catalog: cat, DefaultTimeout: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.MaxTimeout != DefaultMaxTimeout || e.cfg.DefaultTimeout != DefaultMaxTimeout || e.cfg.MaxOutputBytes != sandbox.DefaultMaxOutputBytes {
		t.Fatalf("config after New: %+v", e.cfg)
	}
	want := map[isolation.Tier]int{isolation.TierWasm: 256, isolation.TierOCI: 1024, isolation.TierMicroVM: 1024}
	for tier, mb := range want {
		if e.cfg.MaxMemoryMB[tier] != mb {
			t.Errorf("ceiling of %s = %d, want %d", tier, e.cfg.MaxMemoryMB[tier], mb)
		}
	}
	if _, ok := e.cfg.MaxMemoryMB[isolation.TierNone]; ok {
		t.Error("the None tier has a memory ceiling; it applies none")
	}
}
