package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
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

const childEnv = "AXOISO_MCPSERVER_STDIO_CHILD"

// TestMain doubles as the stdio server binary: with childEnv set to a tools root, the test binary
// serves MCP on stdin/stdout, as `axoiso mcp` does.
func TestMain(m *testing.M) {
	if root := os.Getenv(childEnv); root != "" {
		os.Exit(stdioChild(root))
	}
	os.Exit(m.Run())
}

func stdioChild(root string) int {
	cat, err := catalog.Open(root)
	if err != nil {
		slog.Error("catalog", "error", err)
		return 1
	}
	exec, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.NewWithBuiltins()}})
	if err != nil {
		return 1
	}
	defer exec.Close()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := ServeStdio(context.Background(), exec, Config{Logger: log}); err != nil {
		log.Error("serve", "error", err)
		return 1
	}
	return 0
}

func connect(t *testing.T, s *Server) *mcp.ClientSession {
	t.Helper()
	ct, st := mcp.NewInMemoryTransports()
	ctx, cancel := context.WithCancel(context.Background())
	ss, err := s.MCP().Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
		cancel()
	})
	return cs
}

func text(r *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

func TestListTools(t *testing.T) {
	f := testtools.New(t)
	cs := connect(t, New(f.Exec, Config{}))
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*mcp.Tool{}
	for _, tl := range res.Tools {
		got[tl.Name] = tl
	}
	want, _ := f.Exec.Tools()
	if len(got) != len(want) {
		t.Errorf("%d MCP tools, executor has %d", len(got), len(want))
	}
	schema := func(name string) string {
		tl := got[name]
		if tl == nil {
			t.Fatalf("tool %s missing", name)
		}
		b, _ := json.Marshal(tl.InputSchema)
		return string(b)
	}
	cases := []struct {
		tool     string
		contains []string
	}{
		{"typed", []string{`"required":["n"]`, `"type":"integer"`}},
		{"echo", []string{`{"type":"object"}`}},
		{"list", []string{`"properties":{"input":{"items":{"type":"number"},"type":"array"}}`, `"required":["input"]`}},
	}
	for _, c := range cases {
		s := schema(c.tool)
		for _, want := range c.contains {
			if !strings.Contains(s, want) {
				t.Errorf("%s schema %s lacks %s", c.tool, s, want)
			}
		}
	}
	if got["list"].Meta[MetaInput] != "wrapped" || got["typed"].Meta[MetaInput] != nil {
		t.Errorf("meta: list %v typed %v", got["list"].Meta, got["typed"].Meta)
	}
	if got["typed"].Description != "Doubles n." {
		t.Errorf("description %q", got["typed"].Description)
	}
}

func TestCallTool(t *testing.T) {
	f := testtools.New(t)
	cs := connect(t, New(f.Exec, Config{}))
	cases := []struct {
		name       string
		tool       string
		args       any
		isError    bool
		structured string   // exact JSON of structuredContent on success
		contains   []string // in the text content
	}{
		{name: "object output", tool: "typed", args: map[string]any{"n": 5}, structured: `{"double":10}`, contains: []string{`{"double":10}`}},
		{name: "echo", tool: "echo", args: map[string]any{"a": []int{1, 2}}, structured: `{"a":[1,2]}`},
		{name: "no arguments", tool: "echo", args: nil, structured: `{}`},
		{name: "wrapped input", tool: "list", args: map[string]any{"input": []float64{1, 2, 3.5}}, structured: `{"sum":6.5}`},
		{name: "wrapped input missing", tool: "list", args: map[string]any{"nums": []int{1}}, isError: true, contains: []string{"invalid_input", `"input"`}},
		{name: "schema mismatch", tool: "typed", args: map[string]any{"n": "five"}, isError: true, contains: []string{"invalid_input"}},
		{name: "tool fails", tool: "fail", args: map[string]any{}, isError: true, contains: []string{"tool_failed", "boom on purpose"}},
		{name: "tool panics", tool: "panic", args: map[string]any{}, isError: true, contains: []string{"tool_failed", "panicked on purpose"}},
		{name: "bad output", tool: "badjson", args: map[string]any{}, isError: true, contains: []string{"output_invalid"}},
		{name: "huge output", tool: "huge", args: map[string]any{}, isError: true, contains: []string{"output_too_large"}},
		{name: "timeout", tool: "sleepy", args: map[string]any{}, isError: true, contains: []string{"timeout", "stopped after 100ms"}},
		{name: "no tier", tool: "needs-wasm", args: map[string]any{}, isError: true, contains: []string{"tier_unavailable"}},
		{name: "after failures", tool: "echo", args: map[string]any{"still": "alive"}, structured: `{"still":"alive"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: c.tool, Arguments: c.args})
			if err != nil {
				t.Fatalf("protocol error: %v", err)
			}
			if res.IsError != c.isError {
				t.Fatalf("isError %v, want %v: %s", res.IsError, c.isError, text(res))
			}
			for _, s := range c.contains {
				if !strings.Contains(text(res), s) {
					t.Errorf("text %q lacks %q", text(res), s)
				}
			}
			if res.Meta[MetaCallID] == "" || res.Meta[MetaCallID] == nil {
				t.Errorf("no call id in _meta: %v", res.Meta)
			}
			if c.isError {
				b, _ := json.Marshal(res.StructuredContent)
				if !strings.Contains(string(b), `"kind"`) || !strings.Contains(text(res), res.Meta[MetaCallID].(string)) {
					t.Errorf("error result: structured %s, text %q", b, text(res))
				}
				return
			}
			b, _ := json.Marshal(res.StructuredContent)
			if string(b) != c.structured {
				t.Errorf("structured %s, want %s", b, c.structured)
			}
			var fromText any
			if err := json.Unmarshal([]byte(text(res)), &fromText); err != nil {
				t.Errorf("text content is not the output JSON: %q", text(res))
			}
			if res.Meta[MetaTier] != "None" {
				t.Errorf("tier meta %v", res.Meta)
			}
			if lim, _ := res.Meta[MetaLimits].(map[string]any); lim["timeout_ms"] == nil || lim["max_output_bytes"] == nil {
				t.Errorf("limits meta %v", res.Meta)
			}
		})
	}
	// Non-object outputs are wrapped in structuredContent and verbatim in the text.
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "list", Arguments: map[string]any{"input": []int{}}})
	if err != nil || res.IsError {
		t.Fatal(err, res)
	}
	// An unknown tool is a protocol error, as the spec asks.
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "ghost", Arguments: map[string]any{}}); err == nil {
		t.Error("calling an unknown tool succeeded")
	}
}

func TestNonObjectOutput(t *testing.T) {
	f := testtools.New(t)
	f.Native.Register(native.Tool{Name: "answer", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`[42]`), nil
	}})
	cs := connect(t, New(f.Exec, Config{}))
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "answer"})
	if err != nil || res.IsError {
		t.Fatal(err, res)
	}
	b, _ := json.Marshal(res.StructuredContent)
	if string(b) != `{"result":[42]}` || text(res) != `[42]` {
		t.Errorf("structured %s text %q", b, text(res))
	}
}

func TestToolListFollowsCatalog(t *testing.T) {
	f := testtools.New(t)
	cs := connect(t, New(f.Exec, Config{}))
	names := func() map[string]string {
		res, err := cs.ListTools(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, tl := range res.Tools {
			m[tl.Name] = tl.Description
		}
		return m
	}
	if _, ok := names()["late"]; ok {
		t.Fatal("late exists before it was written")
	}
	testtools.WriteTool(t, f.Root, "late", `{"runtime":"NativeTrusted","description":"v1"}`)
	f.Native.Register(native.Tool{Name: "late", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`{"late":true}`), nil
	}})
	if d := names()["late"]; d != "v1" {
		t.Fatalf("late after adding: %q", d)
	}
	testtools.WriteTool(t, f.Root, "late", `{"runtime":"NativeTrusted","description":"v2"}`)
	if d := names()["late"]; d != "v2" {
		t.Fatalf("late after changing: %q", d)
	}
	// A folder-only tool disappears with its folder (a tool also registered in-process stays,
	// as a built-in).
	os.RemoveAll(filepath.Join(f.Root, "needs-wasm"))
	if _, ok := names()["needs-wasm"]; ok {
		t.Error("needs-wasm still listed after its folder was removed")
	}
	// A tool written after the session's last list is callable at once.
	testtools.WriteTool(t, f.Root, "later", `{"runtime":"NativeTrusted"}`)
	f.Native.Register(native.Tool{Name: "later", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`{"later":true}`), nil
	}})
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "later"})
	if err != nil || res.IsError {
		t.Fatalf("calling a new tool: %v %+v", err, res)
	}
}

func TestGateAndObserve(t *testing.T) {
	f := testtools.New(t)
	var observed []string
	s := New(f.Exec, Config{
		Gate: func(ctx context.Context, tool string) (func(), error) {
			if tool == "fail" {
				return nil, &isolation.Error{Kind: isolation.ErrBusy, Tool: tool, Message: "over the limit"}
			}
			return func() {}, nil
		},
		Observe: func(tool string, res *executor.Result, err error, d time.Duration) {
			observed = append(observed, tool)
		},
	})
	cs := connect(t, s)
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "fail", Arguments: map[string]any{}})
	if err != nil || !res.IsError || !strings.HasPrefix(text(res), "busy: ") || !strings.Contains(text(res), "retry later") {
		t.Fatalf("gated call: %v %s", err, text(res))
	}
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(observed, ",") != "echo" {
		t.Errorf("observed %v, want [echo] (the refused call never ran)", observed)
	}
}

func TestServeStdio(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip("no executable path: ", err)
	}
	root := t.TempDir()
	testtools.WriteTool(t, root, "disk-tool", `{"runtime":"NativeTrusted","description":"a folder over the echo function"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+root)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
	}
	if strings.Join(names, ",") != "disk-tool,echo,json-stats" {
		t.Errorf("tools %v", names)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "json-stats", Arguments: map[string]any{"a": []any{1, "x", nil}}})
	if err != nil || res.IsError {
		t.Fatalf("%v %+v", err, res)
	}
	if !strings.Contains(text(res), `"depth":2`) {
		t.Errorf("json-stats: %s", text(res))
	}
	// disk-tool has a folder but no registered function: a clean tool error, not a dead server.
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "disk-tool", Arguments: map[string]any{}})
	if err != nil || !res.IsError {
		t.Fatalf("disk-tool: %v %+v", err, res)
	}
	if err := cs.Close(); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("close: %v", err)
	}
	if err := cmd.Wait(); err != nil && cmd.ProcessState == nil {
		t.Errorf("child: %v\n%s", err, stderr.String())
	}
	if cmd.ProcessState != nil && !cmd.ProcessState.Success() {
		t.Errorf("the stdio server exited with %v; stderr:\n%s", cmd.ProcessState, stderr.String())
	}
}
