package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/tracing/otlptest"
)

const (
	traceSecret = "trace-secret-5e1f0a"
	traceMarker = "input-marker-9c2d"
)

// TestTracingThroughServe runs `axoiso serve` with tracing configured and an in-process OTLP/HTTP
// receiver: calls of a real Wasm tool over HTTP (traceparent header) and MCP (_meta, and the /mcp
// request's header) export spans in the caller's trace, children of the caller's span, with every
// phase, tier, downgrade and outcome, and no input, output or secret in any attribute. With
// --nats embedded, the worker's spans join the same trace through the fleet's message headers.
func TestTracingThroughServe(t *testing.T) {
	mod, err := os.ReadFile(wasmGuest(t))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "guest/tool.json"), []byte(`{"runtime":"WasmCompiled","entrypoint":"guest.wasm","timeout_ms":30000}`), 0o644)
	writeFile(t, filepath.Join(root, "guest/guest.wasm"), mod, 0o644)
	t.Setenv("AXO_TRACE_SECRET", traceSecret)
	// The batch processor exports every 50 ms instead of 5 s: the spans arrive while serve runs.
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")

	for _, fleetMode := range []string{"", "embedded"} {
		name := "local"
		if fleetMode != "" {
			name = "fleet-" + fleetMode
		}
		t.Run(name, func(t *testing.T) {
			rcv := otlptest.NewHTTP(t)
			cfg := map[string]any{"cache_dir": t.TempDir(), "disable_tiers": []string{"Oci", "Firecracker"},
				"tracing": map[string]any{"otlp_endpoint": rcv.URL, "protocol": "http"},
				"secrets": map[string]any{"guest": map[string]any{"API_KEY": map[string]any{"env": "AXO_TRACE_SECRET"}}}}
			if fleetMode != "" {
				cfg["fleet"] = map[string]any{"nats": fleetMode, "store_dir": t.TempDir()}
			}
			base := startServe(t, "--tools", root, "--config", configFile(t, cfg))
			input := `{"mode":"secrets","names":["API_KEY"],"name":"` + traceMarker + `"}`

			calls := []struct {
				name, traceID, parent string
				state                 string // the tracestate the call sends
				call                  func(traceparent string)
				outcome               string
			}{
				{name: "HTTP", traceID: "4bf92f3577b34da6a3ce929d0e0e4736", parent: "00f067aa0ba902b7", state: "caller=t1", outcome: "ok",
					call: func(tp string) { httpCall(t, base, tp, input, 200) }},
				{name: "HTTP, the tool fails", traceID: "5bf92f3577b34da6a3ce929d0e0e4736", parent: "10f067aa0ba902b7", state: "caller=t1", outcome: "tool_failed",
					call: func(tp string) { httpCall(t, base, tp, `{"mode":"fail","code":3,"name":"`+traceMarker+`"}`, 502) }},
				{name: "MCP _meta", traceID: "6bf92f3577b34da6a3ce929d0e0e4736", parent: "20f067aa0ba902b7", outcome: "ok",
					call: func(tp string) { mcpCall(t, base, input, mcp.Meta{"traceparent": tp}, nil) }},
				{name: "MCP header", traceID: "7bf92f3577b34da6a3ce929d0e0e4736", parent: "30f067aa0ba902b7", outcome: "ok",
					call: func(tp string) { mcpCall(t, base, input, nil, http.Header{"Traceparent": {tp}}) }},
			}
			for _, c := range calls {
				c.call("00-" + c.traceID + "-" + c.parent + "-01")
			}
			for _, c := range calls {
				t.Run(c.name, func(t *testing.T) {
					want := 6 // the call and five phases
					if fleetMode != "" {
						want = 3 + 6 // gateway: call, catalog, remote; worker: call and five phases
					}
					spans := rcv.WaitFor(20*time.Second, func(s []otlptest.Span) bool { return len(otlptest.Trace(s, c.traceID)) >= want })
					checkCallTrace(t, otlptest.Trace(spans, c.traceID), c.parent, c.state, c.outcome, fleetMode != "")
				})
			}
		})
	}
}

// startServe runs `axoiso serve` in this process on a free loopback port until the test ends,
// and returns its base URL once it answers.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--listen", addr, "--prewarm=false", "--log-level", "error"}, args...), strings.NewReader(""), io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	base := "http://" + addr
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case code := <-done:
			t.Fatalf("serve exited with %d", code)
		default:
		}
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not answer /healthz in 30 s")
		}
	}
}

func httpCall(t *testing.T, base, traceparent, input string, status int) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/v1/tools/guest/execute", strings.NewReader(input))
	req.Header.Set("traceparent", traceparent)
	req.Header.Set("tracestate", "caller=t1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatalf("HTTP call: %d %s, want %d", resp.StatusCode, b, status)
	}
}

// headerTransport adds headers to every request (an MCP client whose HTTP layer propagates).
type headerTransport http.Header

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h {
		r.Header[k] = v
	}
	return http.DefaultTransport.RoundTrip(r)
}

func mcpCall(t *testing.T, base, input string, meta mcp.Meta, header http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tr := &mcp.StreamableClientTransport{Endpoint: base + "/mcp"}
	if header != nil {
		tr.HTTPClient = &http.Client{Transport: headerTransport(header)}
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	var args map[string]any
	json.Unmarshal([]byte(input), &args)
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Meta: meta, Name: "guest", Arguments: args})
	if err != nil || res.IsError {
		t.Fatalf("MCP call: %v %+v", err, res)
	}
}

// checkCallTrace checks one call's spans: the call span is a child of the caller's span (through
// the gateway's remote phase in a fleet), its phases its children, in order, with the tier and
// outcome; no attribute or status holds the input's marker, the secret or its hash.
func checkCallTrace(t *testing.T, spans []otlptest.Span, parent, state, outcome string, fleet bool) {
	t.Helper()
	byID := map[string]otlptest.Span{}
	var calls []otlptest.Span
	for _, s := range spans {
		byID[s.SpanID] = s
		if s.Name == executor.SpanCall {
			calls = append(calls, s)
		}
	}
	var top, worker otlptest.Span
	for _, c := range calls {
		if c.ParentSpanID == parent {
			top = c
		} else {
			worker = c
		}
	}
	if top.SpanID == "" {
		t.Fatalf("no %s span with the caller's span %s as parent among %v", executor.SpanCall, parent, names(spans))
	}
	if top.TraceState != state {
		t.Errorf("tracestate %q, want the caller's %q", top.TraceState, state)
	}
	run := top
	if fleet {
		if got := phasesOf(spans, top.SpanID); !slices.Equal(got, []string{executor.SpanCatalog, executor.SpanRemote}) {
			t.Errorf("gateway phases = %v", got)
		}
		remote := byID[worker.ParentSpanID]
		if worker.SpanID == "" || remote.Name != executor.SpanRemote || remote.ParentSpanID != top.SpanID {
			t.Fatalf("the worker's call span %+v is not a child of the gateway's remote phase (spans %v)", worker, names(spans))
		}
		run = worker
	}
	wantPhases := []string{executor.SpanCatalog, executor.SpanSelect, executor.SpanSetup, executor.SpanRun, executor.SpanTeardown}
	if got := phasesOf(spans, run.SpanID); !slices.Equal(got, wantPhases) {
		t.Errorf("phases = %v, want %v", got, wantPhases)
	}
	for _, c := range []otlptest.Span{top, run} {
		if c.Attributes[string(executor.AttrOutcome)] != outcome || c.Attributes[string(executor.AttrTool)] != "guest" {
			t.Errorf("call span attributes %v, want outcome %s of guest", c.Attributes, outcome)
		}
	}
	if run.Attributes[string(executor.AttrTier)] != "Wasmtime" {
		t.Errorf("tier = %q", run.Attributes[string(executor.AttrTier)])
	}
	if outcome == "ok" && (run.Attributes[string(executor.AttrDegraded)] != "false" || run.Attributes[string(executor.AttrIdeal)] != "Wasmtime") {
		t.Errorf("degraded %q ideal %q", run.Attributes[string(executor.AttrDegraded)], run.Attributes[string(executor.AttrIdeal)])
	}
	secretHash := sha(traceSecret)
	for _, s := range spans {
		for k, v := range s.Attributes {
			for _, bad := range []string{traceMarker, traceSecret, secretHash, "Hello", "the last words"} {
				if strings.Contains(v, bad) {
					t.Errorf("span %s attribute %s = %q holds %q", s.Name, k, v, bad)
				}
			}
		}
		if strings.Contains(s.StatusMsg, "last words") || strings.Contains(s.StatusMsg, traceMarker) {
			t.Errorf("span %s status %q quotes the tool", s.Name, s.StatusMsg)
		}
	}
}

// phasesOf lists the names of parent's children, by start time.
func phasesOf(spans []otlptest.Span, parent string) []string {
	var kids []otlptest.Span
	for _, s := range spans {
		if s.ParentSpanID == parent {
			kids = append(kids, s)
		}
	}
	slices.SortStableFunc(kids, func(a, b otlptest.Span) int { return a.Start.Compare(b.Start) })
	return names(kids)
}

func names(spans []otlptest.Span) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

// axoiso run --traceparent (or $TRACEPARENT) joins the caller's trace; the spans leave before the
// process would exit (Close flushes them). A malformed value is a usage error, not ignored.
func TestRunTraceparent(t *testing.T) {
	rcv := otlptest.NewHTTP(t)
	cfg := configFile(t, map[string]any{"disable_tiers": []string{"Oci", "Firecracker"}, "tracing": map[string]any{"otlp_endpoint": rcv.URL}})
	root := t.TempDir()
	tests := []struct {
		name     string
		args     []string
		env      string
		code     int
		traceID  string
		parent   string
		stderrIs string
	}{
		{name: "flag", args: []string{"--traceparent", "00-8bf92f3577b34da6a3ce929d0e0e4736-40f067aa0ba902b7-01"}, traceID: "8bf92f3577b34da6a3ce929d0e0e4736", parent: "40f067aa0ba902b7"},
		{name: "environment", env: "00-9bf92f3577b34da6a3ce929d0e0e4736-50f067aa0ba902b7-01", traceID: "9bf92f3577b34da6a3ce929d0e0e4736", parent: "50f067aa0ba902b7"},
		{name: "malformed", args: []string{"--traceparent", "00-nope-01"}, code: exitInvalid, stderrIs: "--traceparent: \"00-nope-01\" is not a W3C traceparent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TRACEPARENT", tc.env)
			args := append([]string{"run", "--tools", root, "--config", cfg, "--input", `{"k":"` + traceMarker + `"}`}, tc.args...)
			code, out, errs := runAxoiso(t, "", append(args, "echo")...)
			if code != tc.code || !strings.Contains(errs, tc.stderrIs) {
				t.Fatalf("exit %d (want %d), stdout %q, stderr %q (want %q)", code, tc.code, out, errs, tc.stderrIs)
			}
			if tc.traceID == "" {
				return
			}
			// No wait: the spans were flushed before run returned.
			spans := otlptest.Trace(rcv.Spans(), tc.traceID)
			var call otlptest.Span
			for _, s := range spans {
				if s.Name == executor.SpanCall {
					call = s
				}
			}
			if call.ParentSpanID != tc.parent || call.Attributes[string(executor.AttrTier)] != "None" {
				t.Fatalf("call span %+v, want a child of %s in tier None (spans %v)", call, tc.parent, names(spans))
			}
			if got, want := phasesOf(spans, call.SpanID), []string{executor.SpanCatalog, executor.SpanSelect, executor.SpanRun, executor.SpanTeardown}; !slices.Equal(got, want) {
				t.Errorf("phases %v, want %v", got, want)
			}
		})
	}
}
