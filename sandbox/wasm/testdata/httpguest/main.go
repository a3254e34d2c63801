// Command httpguest is the test tool of the http_request host function: it performs each request
// of its input in turn, {"requests": [wasmhttp.Request...]}, and writes what each one got,
// {"results": [{"status", "body", "url", "error", "kind"}]}.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/axocoatl/isolation/sandbox/wasm/guest/wasmhttp"
)

// helper is set with -ldflags to the hash of package wasmhttp, so the build cache notices it.
var helper = ""

type result struct {
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	URL    string `json:"url,omitempty"`
	Error  string `json:"error,omitempty"`
	Kind   string `json:"kind,omitempty"`
}

func main() {
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(10)
	}
	var in struct {
		Requests []wasmhttp.Request `json:"requests"`
		Buffer   int                `json:"buffer"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(11)
	}
	if in.Buffer > 0 {
		wasmhttp.BufferSize = in.Buffer
	}
	var out struct {
		Helper  string   `json:"helper"`
		Results []result `json:"results"`
	}
	out.Helper = helper
	for _, r := range in.Requests {
		resp, err := wasmhttp.Do(r)
		if err != nil {
			res := result{Error: err.Error()}
			for kind, e := range map[string]error{"denied": wasmhttp.ErrDenied, "too_large": wasmhttp.ErrTooLarge,
				"timeout": wasmhttp.ErrTimeout, "invalid": wasmhttp.ErrInvalid, "limit": wasmhttp.ErrLimit, "failed": wasmhttp.ErrFailed} {
				if errors.Is(err, e) {
					res.Kind = kind
				}
			}
			out.Results = append(out.Results, res)
			continue
		}
		out.Results = append(out.Results, result{Status: resp.Status, Body: string(resp.Body), URL: resp.URL})
	}
	b, _ := json.Marshal(out)
	if err := os.WriteFile("/axocoatl/output.json", b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(12)
	}
}
