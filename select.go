package isolation

import (
	"fmt"
	"strings"
)

// Policy controls tier selection.
type Policy struct {
	// Strict refuses a fallback to a weaker tier than the requirement's ideal one.
	Strict bool
	// Force, when set, runs only in this tier (no fallback).
	Force *Tier
	// Prefer, when set, replaces the requirement's ideal tier: the operator's choice of
	// isolation for the tool (for example ContainerImage tools in Firecracker). Selection starts
	// there and follows its fallback chain; it is the Selection's Ideal, so a weaker tier is a
	// downgrade.
	Prefer *Tier
}

// Candidate is what selection needs to know about one tier on this host.
type Candidate struct {
	Availability
	// Unsupported, when non-empty, says why this tier cannot run the requirement at all
	// (for example Python on Wasmtime).
	Unsupported string
}

// Selection is the outcome of choosing a tier.
type Selection struct {
	Tier Tier
	// Ideal is the requirement's ideal tier.
	Ideal Tier
	// Degraded is true when Tier isolates less strongly than Ideal.
	Degraded bool
}

// Select picks the tier to run a requirement in. candidate reports, for a tier, whether it is
// available and whether it can run the requirement. The error is an *Error of class
// ErrTierUnavailable or ErrDowngradeRefused naming every tier tried and why it was passed over.
func Select(req RuntimeRequirement, policy Policy, candidate func(Tier) Candidate) (Selection, error) {
	ideal := req.IdealTier()
	if policy.Prefer != nil {
		ideal = *policy.Prefer
	}
	chain := FallbackChain(ideal)
	if policy.Force != nil {
		chain = []Tier{*policy.Force}
	}
	var why []string
	refused := false
	for _, t := range chain {
		c := candidate(t)
		switch {
		case !c.Available:
			why = append(why, fmt.Sprintf("%s unavailable: %s", t, c.Reason))
			continue
		case c.Unsupported != "":
			why = append(why, fmt.Sprintf("%s cannot run %s: %s", t, req, c.Unsupported))
			continue
		}
		degraded := t.Strength() < ideal.Strength()
		if degraded && policy.Strict {
			refused = true
			why = append(why, fmt.Sprintf("%s is weaker than %s and downgrades are refused (strict policy)", t, ideal))
			continue
		}
		return Selection{Tier: t, Ideal: ideal, Degraded: degraded}, nil
	}
	kind := ErrTierUnavailable
	if refused {
		kind = ErrDowngradeRefused
	}
	return Selection{Ideal: ideal}, &Error{Kind: kind, Message: fmt.Sprintf("no tier can run %s: %s", req, strings.Join(why, "; "))}
}
