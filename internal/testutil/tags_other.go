//go:build !seccomp

package testutil

// BuildTags are the build tags this test binary was built with that change what the CLI can
// do (without seccomp the Oci tier is unavailable); BuiltCLI builds with them.
const BuildTags = ""
