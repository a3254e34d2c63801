package microvm

import "github.com/axocoatl/isolation/internal/callnet"

// WithRootInInitramfs returns c booting the whole guest root as the initramfs (Config's
// rootInInitramfs): for the tests and benchmarks that compare it with the root drive.
func WithRootInInitramfs(c Config) Config {
	c.rootInInitramfs = true
	return c
}

// NetStats returns the counts of the sandbox's per-call networks (zero before they were made).
func (s *Sandbox) NetStats() callnet.Stats {
	p := s.net.Made()
	if p == nil {
		return callnet.Stats{}
	}
	return p.Stats()
}

// NetNames returns the link prefix and nftables table of the sandbox's per-call networks ("" before
// a call with a network policy made them).
func (s *Sandbox) NetNames() (linkPrefix, table string) {
	p := s.net.Made()
	if p == nil {
		return "", ""
	}
	return p.LinkPrefix(), p.Table()
}
