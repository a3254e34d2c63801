//go:build seccomp

package examples

// buildTags are the tags the CLI under test is built with: this test binary's.
const buildTags = "seccomp"
