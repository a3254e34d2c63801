//go:build !linux

package bundle

import (
	"github.com/axocoatl/isolation"
)

// Read reads a bundle; only on Linux, where the tiers that run bundles exist.
func Read(dir string) (root string, p Process, err error) {
	return "", p, isolation.Errorf(isolation.ErrTierUnavailable, "OCI bundles run only on Linux")
}
