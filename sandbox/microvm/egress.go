package microvm

// SupportsEgress implements sandbox.EgressSupporter: VMs get no network device yet, so a tool
// with a network policy runs in a tier that enforces it (Oci) instead, and Run refuses one.
func (s *Sandbox) SupportsEgress() string {
	return "the microVM tier gives tools no network device yet: a tool with a network policy runs where the policy is enforced (the Oci tier)"
}
