// Command reactor is the snapshot-mode test tool for the Wasm tier: built with
// -buildmode=c-shared, it exports run, which the tier calls on a fresh copy of the memory and
// globals captured after _initialize. The input's "mode" picks a behaviour.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

// calls counts the runs this instance has seen: every call must start from the snapshot, so
// every call must see 1.
var calls int

// initialised is set by package initialisation, which runs once, before the snapshot.
var initialised = setup()

func setup() string { return "at init" }

var sink [][]byte

func main() {}

//go:wasmexport run
func run() {
	calls++
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "read input:", err)
		os.Exit(10)
	}
	var in struct {
		Mode string `json:"mode"`
		Name string `json:"name"`
		Code int    `json:"code"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, "decode input:", err)
		os.Exit(11)
	}
	out := map[string]any{"calls": calls, "initialised": initialised}
	switch in.Mode {
	case "", "greet":
		out["greeting"] = "Hello, " + in.Name + "!"
	case "spin":
		for i := 0; ; i++ {
			if i < 0 {
				break
			}
		}
	case "bomb":
		for {
			sink = append(sink, make([]byte, 1<<20))
		}
	case "fail":
		fmt.Fprintln(os.Stderr, "failing as asked")
		os.Exit(in.Code)
	case "scribble":
		// Leave garbage behind in package state and on the heap: the next call must not see it.
		initialised = "scribbled"
		sink = append(sink, make([]byte, 4<<20))
	}
	b, _ := json.Marshal(out)
	if err := os.WriteFile("/axocoatl/output.json", b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "write output:", err)
		os.Exit(13)
	}
}
