package isolation_test

import (
	"fmt"

	"github.com/axocoatl/isolation"
)

// The downgrade policy on its own: a Python tool (ideal tier Firecracker) on a host where only
// the Oci and Wasmtime tiers are available.
func ExampleSelect() {
	host := func(t isolation.Tier) isolation.Candidate {
		switch t {
		case isolation.TierOCI:
			return isolation.Candidate{Availability: isolation.Availability{Available: true}}
		case isolation.TierWasm:
			return isolation.Candidate{Availability: isolation.Availability{Available: true}, Unsupported: "runs only WebAssembly"}
		}
		return isolation.Candidate{Availability: isolation.Availability{Reason: "no VMM on this host"}}
	}

	sel, err := isolation.Select(isolation.RequirePython, isolation.Policy{}, host)
	fmt.Println(sel.Tier, sel.Ideal, sel.Degraded, err)

	_, err = isolation.Select(isolation.RequirePython, isolation.Policy{Strict: true}, host)
	fmt.Println(isolation.KindName(err))
	fmt.Println(err)
	// Output:
	// Oci Firecracker true <nil>
	// downgrade_refused
	// downgrade refused: no tier can run Python: Firecracker unavailable: no VMM on this host; Oci is weaker than Firecracker and downgrades are refused (strict policy); Wasmtime cannot run Python: runs only WebAssembly
}
