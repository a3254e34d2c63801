// Command hello-wasm is an example Wasm tool: it reads {"name": "..."} from /axocoatl/input.json
// and writes {"greeting": "Hello, ...!"} to /axocoatl/output.json.
//
// It is a reactor: built with -buildmode=c-shared, it exports run (//go:wasmexport run), so the
// Wasm tier initialises the Go runtime and the packages once, snapshots that state, and starts
// every call from the snapshot (about twice as fast as a command). Package-level state written
// by one call is never seen by the next. examples/tools/wordcount is the plain command form.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o hello-wasm.wasm .
// (or go run ./examples/build, which picks the build mode from the //go:wasmexport directive).
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

// main is required by the build mode, and never called.
func main() {}

//go:wasmexport run
//lint:ignore U1000 called by the host through go:wasmexport
func run() {
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fail(err)
	}
	var in struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		fail(err)
	}
	out, err := json.Marshal(map[string]string{"greeting": "Hello, " + in.Name + "!"})
	if err != nil {
		fail(err)
	}
	if err := os.WriteFile("/axocoatl/output.json", out, 0o644); err != nil {
		fail(err)
	}
}

//lint:ignore U1000 used by run
func fail(err error) {
	fmt.Fprintln(os.Stderr, "hello-wasm:", err)
	os.Exit(1)
}
