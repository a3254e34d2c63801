package isolation_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
)

// The first ten tests mirror the original tier.rs tests, one for one.

func TestIdealTierWasm(t *testing.T) {
	if got := isolation.RequireWasm.IdealTier(); got != isolation.TierWasm {
		t.Fatalf("WasmCompiled ideal tier = %s, want Wasmtime", got)
	}
}

func TestIdealTierPython(t *testing.T) {
	if got := isolation.RequirePython.IdealTier(); got != isolation.TierMicroVM {
		t.Fatalf("Python ideal tier = %s, want Firecracker", got)
	}
}

func TestIdealTierShell(t *testing.T) {
	if got := isolation.RequireShell.IdealTier(); got != isolation.TierMicroVM {
		t.Fatalf("Shell ideal tier = %s, want Firecracker", got)
	}
}

func TestIdealTierArbitrary(t *testing.T) {
	if got := isolation.RequireArbitrary.IdealTier(); got != isolation.TierMicroVM {
		t.Fatalf("Arbitrary ideal tier = %s, want Firecracker", got)
	}
}

func TestIdealTierContainerImage(t *testing.T) {
	if got := isolation.RequireContainerImage.IdealTier(); got != isolation.TierOCI {
		t.Fatalf("ContainerImage ideal tier = %s, want Oci", got)
	}
}

func TestIdealTierNativeTrusted(t *testing.T) {
	if got := isolation.RequireNativeTrusted.IdealTier(); got != isolation.TierNone {
		t.Fatalf("NativeTrusted ideal tier = %s, want None", got)
	}
}

func TestNoneAndWasmtimeAlwaysAvailable(t *testing.T) {
	// With only None and Wasmtime on the host, their requirements still run where they should.
	for _, req := range []isolation.RuntimeRequirement{isolation.RequireWasm, isolation.RequireNativeTrusted} {
		sel, err := isolation.Select(req, isolation.Policy{}, hostWith(isolation.TierNone, isolation.TierWasm))
		if err != nil || sel.Tier != req.IdealTier() || sel.Degraded {
			t.Fatalf("%s on a None+Wasmtime host: %+v, %v", req, sel, err)
		}
	}
}

func TestFirecrackerFallbackOrder(t *testing.T) {
	want := []isolation.Tier{isolation.TierMicroVM, isolation.TierOCI, isolation.TierWasm}
	if got := isolation.FallbackChain(isolation.TierMicroVM); !slices.Equal(got, want) {
		t.Fatalf("Firecracker chain = %v, want %v", got, want)
	}
}

func TestOciFallbackOrder(t *testing.T) {
	want := []isolation.Tier{isolation.TierOCI, isolation.TierMicroVM, isolation.TierWasm}
	if got := isolation.FallbackChain(isolation.TierOCI); !slices.Equal(got, want) {
		t.Fatalf("Oci chain = %v, want %v", got, want)
	}
}

func TestTierSerdeRoundTrip(t *testing.T) {
	for _, tier := range isolation.Tiers() {
		b, err := json.Marshal(tier)
		if err != nil {
			t.Fatal(err)
		}
		var back isolation.Tier
		if err := json.Unmarshal(b, &back); err != nil || back != tier {
			t.Fatalf("%s → %s → %v (%v)", tier, b, back, err)
		}
	}
}

// Beyond the original.

func TestWireNames(t *testing.T) {
	tiers := map[isolation.Tier]string{isolation.TierNone: `"None"`, isolation.TierWasm: `"Wasmtime"`, isolation.TierOCI: `"Oci"`, isolation.TierMicroVM: `"Firecracker"`}
	for tier, want := range tiers {
		if b, _ := json.Marshal(tier); string(b) != want {
			t.Errorf("tier %d marshals to %s, want %s", int(tier), b, want)
		}
	}
	reqs := map[isolation.RuntimeRequirement]string{isolation.RequireWasm: `"WasmCompiled"`, isolation.RequirePython: `"Python"`,
		isolation.RequireShell: `"Shell"`, isolation.RequireArbitrary: `"Arbitrary"`, isolation.RequireContainerImage: `"ContainerImage"`,
		isolation.RequireNativeTrusted: `"NativeTrusted"`}
	for req, want := range reqs {
		b, _ := json.Marshal(req)
		if string(b) != want {
			t.Errorf("requirement %d marshals to %s, want %s", int(req), b, want)
		}
		var back isolation.RuntimeRequirement
		if err := json.Unmarshal(b, &back); err != nil || back != req {
			t.Errorf("%s does not round-trip: %v %v", b, back, err)
		}
	}
}

func TestUnknownNamesAreDecodeErrors(t *testing.T) {
	for _, in := range []string{`"wasmtime"`, `"Docker"`, `""`, `"Python3"`, `3`} {
		var tier isolation.Tier
		if err := json.Unmarshal([]byte(in), &tier); err == nil {
			t.Errorf("tier %s decoded to %v", in, tier)
		}
		var req isolation.RuntimeRequirement
		if err := json.Unmarshal([]byte(in), &req); err == nil {
			t.Errorf("requirement %s decoded to %v", in, req)
		}
	}
}

// hostWith is a host on which exactly the given tiers are available and every tier supports
// every requirement except what real tiers refuse (non-Wasm on Wasmtime, non-native on None).
func hostWith(tiers ...isolation.Tier) func(isolation.Tier) isolation.Candidate {
	return hostSupporting(nil, tiers...)
}

func hostSupporting(req *isolation.RuntimeRequirement, tiers ...isolation.Tier) func(isolation.Tier) isolation.Candidate {
	return func(t isolation.Tier) isolation.Candidate {
		if !slices.Contains(tiers, t) {
			return isolation.Candidate{Availability: isolation.Availability{Reason: fmt.Sprintf("%s missing on this host", t)}}
		}
		c := isolation.Candidate{Availability: isolation.Availability{Available: true}}
		if req != nil {
			switch {
			case t == isolation.TierWasm && *req != isolation.RequireWasm:
				c.Unsupported = "Wasmtime runs only WebAssembly modules"
			case t == isolation.TierNone && *req != isolation.RequireNativeTrusted:
				c.Unsupported = "None runs only registered functions"
			}
		}
		return c
	}
}

func TestSelectEveryFallbackRow(t *testing.T) {
	const (
		N  = isolation.TierNone
		W  = isolation.TierWasm
		O  = isolation.TierOCI
		FC = isolation.TierMicroVM
	)
	type row struct {
		req      isolation.RuntimeRequirement
		host     []isolation.Tier
		strict   bool
		want     isolation.Tier
		degraded bool
		err      error
	}
	var rows []row
	// Every requirement whose ideal tier has a fallback chain, on every host that has the weak
	// tiers plus any subset of {Oci, Firecracker}, strict and not.
	for _, req := range []isolation.RuntimeRequirement{isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary, isolation.RequireContainerImage} {
		for _, host := range [][]isolation.Tier{{N, W, O, FC}, {N, W, O}, {N, W, FC}, {N, W}} {
			for _, strict := range []bool{false, true} {
				chain := isolation.FallbackChain(req.IdealTier())
				r := row{req: req, host: host, strict: strict}
				for _, t := range chain {
					if slices.Contains(host, t) {
						r.want, r.degraded = t, t < req.IdealTier()
						break
					}
				}
				if r.degraded && strict {
					r.err = isolation.ErrDowngradeRefused
				}
				rows = append(rows, r)
			}
		}
	}
	// Spot-check the generated expectations against the table in the README.
	spot := map[string]isolation.Tier{}
	for _, r := range rows {
		if !r.strict {
			spot[fmt.Sprintf("%s/%v", r.req, r.host)] = r.want
		}
	}
	for k, want := range map[string]isolation.Tier{
		"Python/[None Wasmtime Oci]":                     O,
		"Python/[None Wasmtime]":                         W,
		"ContainerImage/[None Wasmtime Firecracker]":     FC,
		"ContainerImage/[None Wasmtime]":                 W,
		"Shell/[None Wasmtime Oci Firecracker]":          FC,
		"ContainerImage/[None Wasmtime Oci Firecracker]": O,
	} {
		if spot[k] != want {
			t.Fatalf("expectation for %s = %s, want %s", k, spot[k], want)
		}
	}
	for _, r := range rows {
		name := fmt.Sprintf("%s/%v/strict=%v", r.req, r.host, r.strict)
		t.Run(name, func(t *testing.T) {
			sel, err := isolation.Select(r.req, isolation.Policy{Strict: r.strict}, hostWith(r.host...))
			if r.err != nil {
				if !errors.Is(err, r.err) || !errors.Is(err, isolation.ErrTierUnavailable) {
					t.Fatalf("err = %v, want %v (which is also ErrTierUnavailable)", err, r.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sel.Tier != r.want || sel.Degraded != r.degraded || sel.Ideal != r.req.IdealTier() {
				t.Fatalf("got %+v, want tier %s degraded=%v", sel, r.want, r.degraded)
			}
		})
	}
}

func TestSelectOciToFirecrackerIsNotADowngrade(t *testing.T) {
	sel, err := isolation.Select(isolation.RequireContainerImage, isolation.Policy{Strict: true}, hostWith(isolation.TierNone, isolation.TierWasm, isolation.TierMicroVM))
	if err != nil || sel.Tier != isolation.TierMicroVM || sel.Degraded {
		t.Fatalf("ContainerImage on a host without Oci, strict: %+v %v", sel, err)
	}
}

func TestSelectUnsupportedIsTierUnavailableWithReason(t *testing.T) {
	req := isolation.RequirePython
	_, err := isolation.Select(req, isolation.Policy{}, hostSupporting(&req, isolation.TierNone, isolation.TierWasm))
	if !errors.Is(err, isolation.ErrTierUnavailable) || errors.Is(err, isolation.ErrDowngradeRefused) {
		t.Fatalf("err = %v, want ErrTierUnavailable", err)
	}
	for _, want := range []string{"Firecracker unavailable", "Oci unavailable", "Wasmtime cannot run Python"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestSelectForcedTier(t *testing.T) {
	w, o := isolation.TierWasm, isolation.TierOCI
	sel, err := isolation.Select(isolation.RequireWasm, isolation.Policy{Force: &w}, hostWith(isolation.TierNone, isolation.TierWasm))
	if err != nil || sel.Tier != w {
		t.Fatalf("forced Wasmtime: %+v %v", sel, err)
	}
	if _, err := isolation.Select(isolation.RequireWasm, isolation.Policy{Force: &o}, hostWith(isolation.TierNone, isolation.TierWasm)); !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Fatalf("forced Oci on a host without it: %v", err)
	}
}

// TestOutcomeTable checks the one table every surface reads against hard expectations: a wrong
// entry, a class left out or a new class without a deliberate mapping fails here.
func TestOutcomeTable(t *testing.T) {
	want := map[string]struct {
		class     error
		status    int
		exit      int
		retryable bool
	}{
		"ok":                {nil, 200, 0, false},
		"invalid_tool_name": {isolation.ErrInvalidToolName, 400, 2, false},
		"invalid_input":     {isolation.ErrInvalidInput, 400, 2, false},
		"tool_not_found":    {isolation.ErrToolNotFound, 404, 3, false},
		"invalid_tool":      {isolation.ErrInvalidTool, 424, 3, false},
		"downgrade_refused": {isolation.ErrDowngradeRefused, 409, 4, false},
		"tier_unavailable":  {isolation.ErrTierUnavailable, 422, 4, false},
		"tool_failed":       {isolation.ErrToolFailed, 502, 5, false},
		"output_missing":    {isolation.ErrOutputMissing, 502, 5, false},
		"output_invalid":    {isolation.ErrOutputInvalid, 502, 5, false},
		"output_too_large":  {isolation.ErrOutputTooLarge, 502, 5, false},
		"timeout":           {isolation.ErrTimeout, 504, 6, false},
		"memory_limit":      {isolation.ErrMemoryLimit, 507, 7, false},
		"sandbox_failed":    {isolation.ErrSandboxFailed, 503, 8, true},
		"busy":              {isolation.ErrBusy, 429, 9, true},
		"worker_lost":       {isolation.ErrWorkerLost, 502, 10, false},
		"canceled":          {nil, 503, 130, true},
		"internal":          {nil, 500, 1, false},
	}
	seen := map[string]bool{}
	for _, o := range isolation.Outcomes() {
		w, ok := want[o.Kind]
		if !ok {
			t.Errorf("outcome %q has no expectation", o.Kind)
			continue
		}
		seen[o.Kind] = true
		if o.Class != w.class || o.HTTPStatus != w.status || o.ExitCode != w.exit || o.Retryable != w.retryable {
			t.Errorf("outcome %q = %+v, want %+v", o.Kind, o, w)
		}
		// The class's own outcome is found from an error of it, wrapped or not.
		if o.Class != nil {
			for _, err := range []error{o.Class, &isolation.Error{Kind: o.Class, Tool: "t"}, fmt.Errorf("ctx: %w", &isolation.Error{Kind: o.Class})} {
				if got := isolation.OutcomeOf(err); got.Kind != o.Kind {
					t.Errorf("OutcomeOf(%v) = %q, want %q", err, got.Kind, o.Kind)
				}
			}
		}
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("outcome %q is missing from the table", k)
		}
	}
	if n := len(isolation.Kinds()); n != len(want)-3 {
		t.Errorf("Kinds() has %d classes, want %d", n, len(want)-3)
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{errors.New("boom"), "internal"},
		{fmt.Errorf("tool %q: %w", "x", context.Canceled), "canceled"},
		{context.DeadlineExceeded, "canceled"},
		// A timeout class wins over the context error it wraps.
		{&isolation.Error{Kind: isolation.ErrTimeout, Err: context.DeadlineExceeded}, "timeout"},
		{&isolation.Error{Kind: isolation.ErrSandboxFailed, Err: context.Canceled}, "sandbox_failed"},
	} {
		if got := isolation.KindName(c.err); got != c.want {
			t.Errorf("KindName(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	// The table is not shared: changing a returned copy changes nothing.
	isolation.Outcomes()[1].HTTPStatus = 999
	isolation.Tiers()[0] = isolation.TierMicroVM
	if isolation.Outcomes()[1].HTTPStatus == 999 || isolation.Tiers()[0] != isolation.TierNone {
		t.Error("Outcomes or Tiers returned shared storage")
	}
}

// The operator's isolation choice (Policy.Prefer) is where selection starts and the ideal the
// envelope reports: ContainerImage tools in Firecracker run there, and fall back to Oci as a
// downgrade, which strict refuses.
func TestSelectPrefer(t *testing.T) {
	fc := isolation.TierMicroVM
	all := hostWith(isolation.TierNone, isolation.TierWasm, isolation.TierOCI, isolation.TierMicroVM)
	noVM := hostWith(isolation.TierNone, isolation.TierWasm, isolation.TierOCI)
	for _, tc := range []struct {
		name     string
		host     func(isolation.Tier) isolation.Candidate
		strict   bool
		want     isolation.Tier
		degraded bool
		err      error
	}{
		{"both tiers", all, false, isolation.TierMicroVM, false, nil},
		{"no VMM", noVM, false, isolation.TierOCI, true, nil},
		{"no VMM, strict", noVM, true, 0, false, isolation.ErrDowngradeRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := isolation.Select(isolation.RequireContainerImage, isolation.Policy{Strict: tc.strict, Prefer: &fc}, tc.host)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || sel.Tier != tc.want || sel.Degraded != tc.degraded || sel.Ideal != isolation.TierMicroVM {
				t.Fatalf("got %+v, %v; want tier %s degraded=%v ideal Firecracker", sel, err, tc.want, tc.degraded)
			}
		})
	}
}
