// Command greet is the server tests' Wasm tool: {"name":"x"} → {"greeting":"Hello, x!"}.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "read input:", err)
		os.Exit(2)
	}
	var in struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, "decode input:", err)
		os.Exit(3)
	}
	out, _ := json.Marshal(map[string]string{"greeting": "Hello, " + in.Name + "!"})
	if err := os.WriteFile("/axocoatl/output.json", out, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "write output:", err)
		os.Exit(4)
	}
}
