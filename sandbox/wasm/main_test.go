package wasm

import (
	"fmt"
	"os"
	"testing"
)

// testCacheDir is a compilation cache shared by the sandboxes of this test binary
// (newSandbox): each distinct module is compiled once per run, not once per test, which keeps
// the package's tests within minutes under -race (where wazero's compiler is instrumented and
// compiling the Go guest takes tens of seconds).
var testCacheDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "axocoatl-wasm-test-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	testCacheDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
