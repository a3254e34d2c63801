//go:build seccomp

package testutil

// BuildTags are the build tags this test binary was built with that change what the CLI can
// do (seccomp: the Oci tier); BuiltCLI builds with them.
const BuildTags = "seccomp"
