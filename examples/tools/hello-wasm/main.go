// Command hello-wasm is an example Wasm tool: it reads {"name": "..."} from /axocoatl/input.json
// and writes {"greeting": "Hello, ...!"} to /axocoatl/output.json.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -o hello-wasm.wasm . (or go run ./examples/build).
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
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

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hello-wasm:", err)
	os.Exit(1)
}
