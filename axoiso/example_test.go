package axoiso_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
	"github.com/axocoatl/isolation/server"
)

// Run a Wasm tool whose module is in memory: no tool folder, no tools root. The Oci and
// Firecracker tiers are never set up: this program does not use them.
func ExampleNew() {
	e, err := axoiso.New(axoiso.Config{
		WasmTools: []wasm.Tool{{
			Name:        "hello",
			Module:      helloWasm(), // a WASI module: reads /axocoatl/input.json, writes /axocoatl/output.json
			InputSchema: json.RawMessage(`{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}`),
			TimeoutMS:   5000,
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()

	res, err := e.Execute(context.Background(), "hello", []byte(`{"name":"Ada"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(res.Output), res.Tier, res.Degraded)

	// Bad input never reaches the tool: it is checked against the input schema.
	_, err = e.Execute(context.Background(), "hello", []byte(`{"name":42}`))
	fmt.Println(errors.Is(err, isolation.ErrInvalidInput))
	// Output:
	// {"greeting":"Hello, Ada!"} Wasmtime false
	// true
}

// A Go function as a tool: it runs in this process (the None tier), so it is for code you
// trust; its input is still checked against its schema and its output must be JSON.
func ExampleConfig_nativeTools() {
	e, err := axoiso.New(axoiso.Config{
		NativeTools: []native.Tool{{
			Name:        "upper",
			Description: "Upper-cases a text.",
			InputSchema: json.RawMessage(`{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}`),
			Func: func(ctx context.Context, input json.RawMessage) (json.RawMessage, error) {
				var in struct{ Text string }
				if err := json.Unmarshal(input, &in); err != nil {
					return nil, err
				}
				return json.Marshal(map[string]string{"text": strings.ToUpper(in.Text)})
			},
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()
	res, err := e.Execute(context.Background(), "upper", []byte(`{"text":"quiet"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(res.Output), res.Tier)
	// Output: {"text":"QUIET"} None
}

// The downgrade policy. A Python tool's ideal tier is Firecracker (a microVM); on a host
// without a VMM it falls back to Oci (a container), which isolates less: the result says
// Degraded. With Strict (the config's "strict", `axoiso run --strict`, or
// executor.WithStrict for one call) the call is refused instead. Which of the two happens
// depends on this host's tiers (`axoiso tiers`), so this example has no fixed output; see
// isolation.Select for the policy on its own.
func ExampleConfig_strict() {
	tools := "/var/axocoatl/bundles" // holds py-sum/tool.json ({"runtime":"Python",...}) and main.py
	for _, strict := range []bool{false, true} {
		e, err := axoiso.New(axoiso.Config{ToolsRoot: tools, Strict: strict})
		if err != nil {
			fmt.Println(err)
			return
		}
		res, err := e.Execute(context.Background(), "py-sum", []byte(`{"numbers":[1,2]}`))
		switch {
		case errors.Is(err, isolation.ErrDowngradeRefused):
			fmt.Println("refused: only a weaker tier than Firecracker is available here")
		case err != nil:
			fmt.Println(err)
		case res.Degraded:
			fmt.Printf("ran in %s, weaker than its ideal %s\n", res.Tier, res.Ideal)
		default:
			fmt.Printf("ran in %s\n", res.Tier)
		}
		e.Close()
	}
}

// Serve the executor over HTTP: the API of `axoiso serve` (tools, tiers, execute, metrics,
// OpenAPI, MCP at /mcp), here on a test server.
func Example_serveHTTP() {
	e, err := axoiso.New(axoiso.Config{
		WasmTools: []wasm.Tool{{Name: "hello", Module: helloWasm()}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	srv, err := server.New(server.Config{Executor: e}) // the server owns e from here on
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	ts := httptest.NewServer(srv.Handler()) // or srv.ListenAndServe(ctx) on server.DefaultAddr
	defer ts.Close()

	resp, err := http.Post(ts.URL+"/v1/tools/hello/execute", "application/json", strings.NewReader(`{"name":"HTTP"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))

	resp, err = http.Post(ts.URL+"/v1/tools/nope/execute", "application/json", strings.NewReader(`{}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output:
	// 200 {"greeting":"Hello, HTTP!"}
	// 404
}

var (
	helloOnce sync.Once
	helloBin  []byte
)

// helloWasm is examples/tools/hello-wasm compiled to WebAssembly (GOOS=wasip1 GOARCH=wasm go
// build -buildmode=c-shared): the bytes a program would embed or download.
func helloWasm() []byte {
	helloOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		p, err := wasmbuild.Cached(ctx, "../examples/tools/hello-wasm", filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache"), wasmbuild.Config{BuildMode: "c-shared"})
		if err != nil {
			panic(err)
		}
		if helloBin, err = os.ReadFile(p); err != nil {
			panic(err)
		}
	})
	return helloBin
}
