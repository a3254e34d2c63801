// Package isolation is the public vocabulary of axocoatl-isolation: the tiers a tool can run in,
// the runtime requirements tools declare, the policy that picks a tier for a requirement, and the
// error classes every call reports.
//
// The executor (package executor) runs a call; each tier lives in its own package under sandbox/.
package isolation

import "fmt"

// Tier is an isolation level, weakest first. The zero value is TierNone.
//
// The text and JSON forms are the wire names existing configs use ("None", "Wasmtime", "Oci",
// "Firecracker"); the Go identifiers say what each tier isolates with.
type Tier int

const (
	// TierNone runs a trusted, registered Go function in-process.
	TierNone Tier = iota
	// TierWasm runs a WebAssembly + WASI module (wazero). Wire name "Wasmtime".
	TierWasm
	// TierOCI runs a Linux container from an OCI bundle. Wire name "Oci".
	TierOCI
	// TierMicroVM runs a microVM (Firecracker with KVM, QEMU microvm otherwise). Wire name
	// "Firecracker".
	TierMicroVM
)

// Tiers returns every tier, weakest first.
func Tiers() []Tier { return []Tier{TierNone, TierWasm, TierOCI, TierMicroVM} }

var tierNames = [...]string{"None", "Wasmtime", "Oci", "Firecracker"}

// String returns the wire name.
func (t Tier) String() string {
	if t < 0 || int(t) >= len(tierNames) {
		return fmt.Sprintf("Tier(%d)", int(t))
	}
	return tierNames[t]
}

// Strength orders tiers by how strongly they isolate: a larger value is stronger.
func (t Tier) Strength() int { return int(t) }

// ParseTier parses a wire name. Unknown names are an error.
func ParseTier(s string) (Tier, error) {
	for i, n := range tierNames {
		if n == s {
			return Tier(i), nil
		}
	}
	return 0, fmt.Errorf("unknown tier %q (want one of None, Wasmtime, Oci, Firecracker)", s)
}

func (t Tier) MarshalText() ([]byte, error) {
	if t < 0 || int(t) >= len(tierNames) {
		return nil, fmt.Errorf("invalid tier %d", int(t))
	}
	return []byte(t.String()), nil
}

func (t *Tier) UnmarshalText(b []byte) error {
	v, err := ParseTier(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// RuntimeRequirement is what a tool declares it needs to run.
type RuntimeRequirement int

const (
	RequireWasm RuntimeRequirement = iota
	RequirePython
	RequireShell
	RequireArbitrary
	RequireContainerImage
	RequireNativeTrusted
)

// Requirements returns every requirement.
func Requirements() []RuntimeRequirement {
	return []RuntimeRequirement{RequireWasm, RequirePython, RequireShell, RequireArbitrary, RequireContainerImage, RequireNativeTrusted}
}

var requirementNames = [...]string{"WasmCompiled", "Python", "Shell", "Arbitrary", "ContainerImage", "NativeTrusted"}

// String returns the wire name.
func (r RuntimeRequirement) String() string {
	if r < 0 || int(r) >= len(requirementNames) {
		return fmt.Sprintf("RuntimeRequirement(%d)", int(r))
	}
	return requirementNames[r]
}

// ParseRequirement parses a wire name. Unknown names are an error.
func ParseRequirement(s string) (RuntimeRequirement, error) {
	for i, n := range requirementNames {
		if n == s {
			return RuntimeRequirement(i), nil
		}
	}
	return 0, fmt.Errorf("unknown runtime requirement %q (want one of WasmCompiled, Python, Shell, Arbitrary, ContainerImage, NativeTrusted)", s)
}

func (r RuntimeRequirement) MarshalText() ([]byte, error) {
	if r < 0 || int(r) >= len(requirementNames) {
		return nil, fmt.Errorf("invalid runtime requirement %d", int(r))
	}
	return []byte(r.String()), nil
}

func (r *RuntimeRequirement) UnmarshalText(b []byte) error {
	v, err := ParseRequirement(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// IdealTier is the tier a requirement runs in when the host has every tier.
func (r RuntimeRequirement) IdealTier() Tier {
	switch r {
	case RequireWasm:
		return TierWasm
	case RequirePython, RequireShell, RequireArbitrary:
		return TierMicroVM
	case RequireContainerImage:
		return TierOCI
	default:
		return TierNone
	}
}

// FallbackChain is the order in which tiers are tried for a preferred tier, the preferred one
// first: Firecracker → Oci → Wasmtime; Oci → Firecracker → Wasmtime; the others have no fallback.
func FallbackChain(preferred Tier) []Tier {
	switch preferred {
	case TierMicroVM:
		return []Tier{TierMicroVM, TierOCI, TierWasm}
	case TierOCI:
		return []Tier{TierOCI, TierMicroVM, TierWasm}
	default:
		return []Tier{preferred}
	}
}

// Availability says whether a tier can run on this host and, when it cannot, why and how to fix it.
type Availability struct {
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	Fix       string `json:"fix,omitempty"`
	// Backend names the mechanism that would be used ("wazero", "libcontainer", "qemu-microvm", ...).
	Backend string `json:"backend,omitempty"`
	// Network says whether tools with a network policy can run in this tier here: how, or
	// "unavailable: " and why (such tools are then refused, never run without their policy).
	// Empty for a tier that never gives a tool a network.
	Network string `json:"network,omitempty"`
}
