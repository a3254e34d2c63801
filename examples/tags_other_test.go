//go:build !seccomp

package examples

// buildTags are the tags the CLI under test is built with: this test binary's (without seccomp,
// the Oci tier reports itself unavailable and its examples skip).
const buildTags = ""
