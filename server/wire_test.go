package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/server/internal/testtools"
)

// faultTier stands in for the Wasm tier and fails every call the way its input says:
// {"class":"timeout"} returns an error of that class (by wire kind), {"raw":"…"} an untyped error,
// as a tier whose VMM died would. Everything above it (executor, HTTP, MCP, metrics) is real.
type faultTier struct{}

func (faultTier) Tier() isolation.Tier { return isolation.TierWasm }
func (faultTier) Probe(context.Context) isolation.Availability {
	return isolation.Availability{Available: true, Backend: "fault"}
}
func (faultTier) Supports(isolation.RuntimeRequirement) string { return "" }
func (faultTier) Close() error                                 { return nil }
func (faultTier) Run(_ context.Context, call sandbox.Call) (sandbox.Outcome, error) {
	var in struct{ Class, Raw string }
	if err := json.Unmarshal(call.Input, &in); err != nil {
		return sandbox.Outcome{}, err
	}
	if in.Raw != "" {
		return sandbox.Outcome{}, errors.New(in.Raw)
	}
	for _, o := range isolation.Outcomes() {
		if o.Kind == in.Class && o.Class != nil {
			return sandbox.Outcome{}, isolation.Errorf(o.Class, "injected %s", o.Kind)
		}
	}
	return sandbox.Outcome{}, fmt.Errorf("no class %q", in.Class)
}

// TestEveryClassOnEveryWire sends an error of every class through the real stack to each
// surface: the HTTP status, kind, retryable flag and Retry-After; MCP's isError result and its
// kind; the metrics' outcome label. Expectations are written out here, not read from the table,
// so a wrong entry in the table fails (the CLI's exit codes: cmd/axoiso's TestExitCodes).
func TestEveryClassOnEveryWire(t *testing.T) {
	want := map[string]struct {
		status    int
		retryable bool
	}{
		"invalid_tool_name": {400, false},
		"invalid_input":     {400, false},
		"tool_not_found":    {404, false},
		"invalid_tool":      {424, false},
		"downgrade_refused": {409, false},
		"tier_unavailable":  {422, false},
		"tool_failed":       {502, false},
		"output_missing":    {502, false},
		"output_invalid":    {502, false},
		"output_too_large":  {502, false},
		"timeout":           {504, false},
		"memory_limit":      {507, false},
		"sandbox_failed":    {503, true},
		"busy":              {429, true},
		"worker_lost":       {502, false},
	}
	root := t.TempDir()
	testtools.WriteTool(t, root, "fault", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm"}`)
	if err := os.WriteFile(filepath.Join(root, "fault", "tool.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	exec, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.New(), faultTier{}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Executor: exec})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer func() { ts.Close(); s.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).
		Connect(ctx, &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	type row struct{ name, input, kind string }
	var rows []row
	for _, k := range isolation.Kinds() {
		kind := isolation.KindName(k)
		if _, ok := want[kind]; !ok {
			t.Errorf("class %q has no expectation here", kind)
			continue
		}
		rows = append(rows, row{kind, fmt.Sprintf(`{"class":%q}`, kind), kind})
	}
	// What no class matches is the tier's failure, not the service's: sandbox_failed with the tier.
	rows = append(rows, row{"untyped", `{"raw":"qemu: terminating on signal 9"}`, "sandbox_failed"})
	if len(rows) != len(want)+1 {
		t.Fatalf("%d classes, %d expectations", len(rows)-1, len(want))
	}
	count := map[string]int{}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			w := want[r.kind]
			count[r.kind]++
			resp, body := do(t, "POST", ts.URL+"/v1/tools/fault/execute", r.input, nil)
			var e struct {
				Error struct {
					Kind, Message, Tier string
					Retryable           bool
				}
			}
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if resp.StatusCode != w.status || e.Error.Kind != r.kind || e.Error.Retryable != w.retryable || e.Error.Tier != "Wasmtime" {
				t.Errorf("HTTP: %d %s; want %d kind %s retryable %v tier Wasmtime", resp.StatusCode, body, w.status, r.kind, w.retryable)
			}
			if got := resp.Header.Get("Retry-After") != ""; got != w.retryable {
				t.Errorf("HTTP: Retry-After %q with retryable %v", resp.Header.Get("Retry-After"), w.retryable)
			}
			if r.name == "untyped" && !strings.Contains(e.Error.Message, "signal 9") {
				t.Errorf("the sandbox's own words are lost: %q", e.Error.Message)
			}

			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fault", Arguments: json.RawMessage(r.input)})
			if err != nil {
				t.Fatalf("MCP: a protocol error instead of an isError result: %v", err)
			}
			sc, _ := json.Marshal(res.StructuredContent)
			var me struct {
				Error struct {
					Kind      string
					Retryable bool
				}
			}
			json.Unmarshal(sc, &me)
			if !res.IsError || me.Error.Kind != r.kind || me.Error.Retryable != w.retryable {
				t.Errorf("MCP: isError %v structured %s; want kind %s retryable %v", res.IsError, sc, r.kind, w.retryable)
			}
			if txt := res.Content[0].(*mcp.TextContent).Text; !strings.HasPrefix(txt, r.kind+": ") {
				t.Errorf("MCP: text %q does not start with the kind", txt)
			}
			count[r.kind]++
		})
	}
	_, metrics := do(t, "GET", ts.URL+"/metrics", "", nil)
	for kind, n := range count {
		tool := "fault"
		if kind == "invalid_tool_name" || kind == "tool_not_found" {
			tool = "_unknown" // labels never carry a name that did not resolve to a tool
		}
		line := fmt.Sprintf(`axoiso_calls_total{outcome=%q,tier="Wasmtime",tool=%q} %d`, kind, tool, n)
		if !strings.Contains(string(metrics), line+"\n") {
			t.Errorf("metrics lack %s:\n%s", line, grep(metrics, "axoiso_calls_total"))
		}
	}
}

// TestOutcomesOutsideClasses: the caller's context and faults of the service itself.
func TestOutcomesOutsideClasses(t *testing.T) {
	for _, c := range []struct {
		err       error
		status    int
		kind      string
		retryable bool
	}{
		{fmt.Errorf("tool %q: %w", "x", context.Canceled), 503, "canceled", true},
		{errors.New("json: unsupported value"), 500, "internal", false},
	} {
		rec := httptest.NewRecorder()
		(&Server{log: slog.New(slog.DiscardHandler), shutdown: context.Background()}).writeCallError(rec, httptest.NewRequest("POST", "/", nil), "id", c.err)
		var e errorDoc
		json.Unmarshal(rec.Body.Bytes(), &e)
		if rec.Code != c.status || e.Error.Kind != c.kind || (rec.Header().Get("Retry-After") != "") != c.retryable {
			t.Errorf("%v: %d %s", c.err, rec.Code, rec.Body)
		}
		if Status(c.err) != c.status {
			t.Errorf("Status(%v) = %d", c.err, Status(c.err))
		}
	}
	// Refused because shutdown began: busy, but 503 (this server is going away), not 429.
	rec := httptest.NewRecorder()
	err := &isolation.Error{Kind: isolation.ErrBusy, Err: errShuttingDown}
	(&Server{log: slog.New(slog.DiscardHandler), shutdown: context.Background()}).writeCallError(rec, httptest.NewRequest("POST", "/", nil), "id", err)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"kind":"busy"`) {
		t.Errorf("shutting down: %d %s", rec.Code, rec.Body)
	}
}

// TestBrokenToolAndShutdownRefusals: a broken tool folder is invalid_tool (424, the operator's to
// fix: not the caller's request, not a fault of the service), on execute and on the tool's page;
// a call that arrives once shutdown has begun is refused 503 busy.
func TestBrokenToolAndShutdownRefusals(t *testing.T) {
	s, f, ts := newTestServer(t, Config{})
	testtools.WriteTool(t, f.Root, "broken", `{"runtime":"NoSuchRuntime"}`)
	for _, c := range []struct{ method, path string }{{"POST", "/v1/tools/broken/execute"}, {"GET", "/v1/tools/broken"}} {
		resp, body := do(t, c.method, ts.URL+c.path, `{}`, nil)
		var e errorDoc
		json.Unmarshal(body, &e)
		if resp.StatusCode != 424 || e.Error.Kind != "invalid_tool" || !strings.Contains(e.Error.Message, "NoSuchRuntime") {
			t.Errorf("%s %s: %d %s", c.method, c.path, resp.StatusCode, body)
		}
	}
	s.cancelShutdown()
	resp, body := do(t, "POST", ts.URL+"/v1/tools/echo/execute", `{}`, nil)
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"kind":"busy"`) || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a call during shutdown: %d %s", resp.StatusCode, body)
	}
}
