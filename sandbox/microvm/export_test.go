package microvm

// WithRootInInitramfs returns c booting the whole guest root as the initramfs (Config's
// rootInInitramfs): for the tests and benchmarks that compare it with the root drive.
func WithRootInInitramfs(c Config) Config {
	c.rootInInitramfs = true
	return c
}
