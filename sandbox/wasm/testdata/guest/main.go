// Command guest is the test tool for the Wasm tier: the input's "mode" picks a behaviour.
package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// version is set with -ldflags "-X main.version=..." to build a changed module.
var version = "1"

type input struct {
	Mode  string `json:"mode"`
	Name  string `json:"name"`
	Code  int    `json:"code"`
	Size  int    `json:"size"`
	Path  string `json:"path"`
	Lines int    `json:"lines"`
	// Names are the environment variables mode "secrets" reports.
	Names []string `json:"names"`
}

var sink [][]byte

func main() {
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "read input:", err)
		os.Exit(10)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, "decode input:", err)
		os.Exit(11)
	}
	out := map[string]any{"version": version}
	switch in.Mode {
	case "", "greet":
		out["greeting"] = "Hello, " + in.Name + "!"
	case "echo":
		write(raw)
		return
	case "nooutput":
		return
	case "invalid":
		write([]byte("{not json"))
		return
	case "big":
		write([]byte(`"` + strings.Repeat("x", in.Size) + `"`))
		return
	case "fail":
		for i := 0; i < in.Lines; i++ {
			fmt.Fprintf(os.Stderr, "line %d of the failure\n", i)
		}
		fmt.Fprintln(os.Stderr, "the last words")
		os.Exit(in.Code)
	case "stdout":
		fmt.Println("printed on stdout")
	case "secrets":
		// Each variable's SHA-256 (never its value) in the output, and NAME=value on stdout and
		// stderr, where the host must hide secrets; then exit with code.
		sums := map[string]string{}
		for _, n := range in.Names {
			v, ok := os.LookupEnv(n)
			if ok {
				sums[n] = fmt.Sprintf("%x", sha256.Sum256([]byte(v)))
			}
			fmt.Printf("%s=%s\n", n, v)
			fmt.Fprintf(os.Stderr, "%s=%s\n", n, v)
		}
		out["sha256"] = sums
		if in.Code != 0 {
			b, _ := json.Marshal(out)
			write(b)
			os.Exit(in.Code)
		}
	case "print": // sandboxtest's Print
		fmt.Println("conformance: to stdout")
		fmt.Fprintln(os.Stderr, "conformance: to stderr")
	case "spin":
		for i := 0; ; i++ {
			if i < 0 {
				break
			}
		}
	case "sleep":
		time.Sleep(time.Hour)
	case "bomb":
		for {
			sink = append(sink, make([]byte, 1<<20))
		}
	case "readfile":
		b, err := os.ReadFile(in.Path)
		out["content"] = string(b)
		if err != nil {
			out["error"] = err.Error()
		}
	case "listdir":
		ents, err := os.ReadDir(in.Path)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		out["names"] = names
		if err != nil {
			out["error"] = err.Error()
		}
	case "env":
		out["env"] = os.Environ()
		out["args"] = os.Args
	case "writeinput":
		err := os.WriteFile("/axocoatl/input.json", []byte(`{"changed":true}`), 0o644)
		out["error"] = fmt.Sprint(err)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", in.Mode)
		os.Exit(12)
	}
	b, _ := json.Marshal(out)
	write(b)
}

func write(b []byte) {
	if err := os.WriteFile("/axocoatl/output.json", b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "write output:", err)
		os.Exit(13)
	}
}
