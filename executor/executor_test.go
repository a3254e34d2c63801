package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox/native"
)

func newExecutor(t *testing.T, cfg executor.Config, tools ...native.Tool) *executor.Executor {
	t.Helper()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "wasm-tool"), 0o755)
	os.WriteFile(filepath.Join(root, "wasm-tool/tool.json"), []byte(`{"runtime":"WasmCompiled","entrypoint":"m.wasm"}`), 0o644)
	os.WriteFile(filepath.Join(root, "wasm-tool/m.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	os.MkdirAll(filepath.Join(root, "typed"), 0o755)
	os.WriteFile(filepath.Join(root, "typed/tool.json"), []byte(`{"runtime":"NativeTrusted","input_schema":{"type":"object","required":["n"]}}`), 0o644)
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Catalog = c
	sb := native.NewWithBuiltins()
	for _, tl := range tools {
		sb.Register(tl)
	}
	sb.Register(native.Tool{Name: "typed", Func: func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }})
	cfg.Sandboxes = append(cfg.Sandboxes, sb)
	e, err := executor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestExecuteBuiltins(t *testing.T) {
	e := newExecutor(t, executor.Config{})
	res, err := e.Execute(context.Background(), "echo", []byte(`{"a":[1,2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Output) != `{"a":[1,2]}` || res.Tier != isolation.TierNone || res.Degraded || res.CallID == "" {
		t.Fatalf("echo result = %+v", res)
	}
	res, err = e.Execute(context.Background(), "json-stats", []byte(`{"a":[1,"x",null,true,{}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Depth  int
		Counts map[string]int
	}
	if err := json.Unmarshal(res.Output, &st); err != nil || st.Depth != 3 || st.Counts["objects"] != 2 || st.Counts["numbers"] != 1 || st.Counts["nulls"] != 1 {
		t.Fatalf("json-stats = %s (%v)", res.Output, err)
	}
}

func TestExecuteErrorClasses(t *testing.T) {
	block := func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	e := newExecutor(t, executor.Config{MaxOutputBytes: 64},
		native.Tool{Name: "fails", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, errors.New("kaboom") }},
		native.Tool{Name: "panics", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) { panic("oh no") }},
		native.Tool{Name: "garbage", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) { return json.RawMessage(`{nope`), nil }},
		native.Tool{Name: "huge", Func: func(context.Context, json.RawMessage) (json.RawMessage, error) {
			return json.Marshal(strings.Repeat("x", 100))
		}},
		native.Tool{Name: "slow", Func: block},
	)
	tests := []struct {
		tool, input string
		opts        []executor.Option
		kind        error
		says        string
	}{
		{"../etc", `{}`, nil, isolation.ErrInvalidToolName, "tool name"},
		{"a/b", `{}`, nil, isolation.ErrInvalidToolName, "tool name"},
		{"nope", `{}`, nil, isolation.ErrToolNotFound, "nope"},
		{"echo", `{"a":`, nil, isolation.ErrInvalidInput, "not a single valid JSON value"},
		{"echo", `{} {}`, nil, isolation.ErrInvalidInput, "JSON"},
		{"typed", `{"m":1}`, nil, isolation.ErrInvalidInput, "input_schema"},
		{"wasm-tool", `{}`, nil, isolation.ErrTierUnavailable, "Wasmtime unavailable"},
		{"echo", `{}`, []executor.Option{executor.WithTier(isolation.TierOCI)}, isolation.ErrTierUnavailable, "Oci"},
		{"fails", `{}`, nil, isolation.ErrToolFailed, "code 1"},
		{"panics", `{}`, nil, isolation.ErrToolFailed, "code 1"},
		{"garbage", `{}`, nil, isolation.ErrOutputInvalid, "not valid JSON"},
		{"huge", `{}`, nil, isolation.ErrOutputTooLarge, "limit is 64"},
		{"slow", `{}`, []executor.Option{executor.WithTimeout(20 * time.Millisecond)}, isolation.ErrTimeout, "20ms"},
	}
	for _, tt := range tests {
		t.Run(tt.tool+"/"+isolation.KindName(tt.kind), func(t *testing.T) {
			_, err := e.Execute(context.Background(), tt.tool, []byte(tt.input), tt.opts...)
			if !errors.Is(err, tt.kind) {
				t.Fatalf("err = %v, want %v", err, tt.kind)
			}
			var ie *isolation.Error
			if !errors.As(err, &ie) || ie.CallID == "" {
				t.Fatalf("err %v is not an *isolation.Error with a call id", err)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("err %q does not say %q", err, tt.says)
			}
		})
	}
	_, err := e.Execute(context.Background(), "fails", []byte(`{}`))
	var ie *isolation.Error
	if !errors.As(err, &ie) || ie.ExitCode != 1 || !strings.Contains(ie.Stderr, "kaboom") {
		t.Fatalf("failed tool error lacks exit code or stderr: %#v", ie)
	}
}

func TestExecuteContextCancel(t *testing.T) {
	started := make(chan struct{})
	e := newExecutor(t, executor.Config{}, native.Tool{Name: "wait", Func: func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err := e.Execute(ctx, "wait", []byte(`{}`))
	if !errors.Is(err, context.Canceled) || errors.Is(err, isolation.ErrTimeout) {
		t.Fatalf("cancelled call: %v, want context.Canceled", err)
	}
}

func TestMaxTimeoutCapsCalls(t *testing.T) {
	e := newExecutor(t, executor.Config{MaxTimeout: 30 * time.Millisecond}, native.Tool{Name: "wait", Func: func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	_, err := e.Execute(context.Background(), "wait", []byte(`{}`), executor.WithTimeout(time.Hour))
	if !errors.Is(err, isolation.ErrTimeout) || !strings.Contains(err.Error(), "30ms") {
		t.Fatalf("err = %v, want a timeout at the 30ms cap", err)
	}
}

func TestToolsListsBuiltinsAndFolders(t *testing.T) {
	e := newExecutor(t, executor.Config{})
	tools, errs := e.Tools()
	var names []string
	for _, tl := range tools {
		names = append(names, tl.Name)
	}
	if got := strings.Join(names, ","); got != "echo,json-stats,typed,wasm-tool" || len(errs) != 0 {
		t.Fatalf("tools = %s, errs = %v", got, errs)
	}
	st := e.Tiers(context.Background())
	if len(st) != 4 || !st[0].Available || st[1].Available || st[1].Reason == "" {
		t.Fatalf("tiers = %+v", st)
	}
}

// TestInputChecks: input that is not valid UTF-8 used to be passed to the tool (and echoed raw in
// JSON responses); input nested too deep was reported as not JSON. Both are ErrInvalidInput
// naming the fault, before any tier runs.
func TestInputChecks(t *testing.T) {
	e := newExecutor(t, executor.Config{})
	for _, tt := range []struct{ in, want string }{
		{"{\"a\":\"\xff\xfe\"}", "UTF-8"},
		{strings.Repeat("[", catalog.MaxInputDepth+1) + strings.Repeat("]", catalog.MaxInputDepth+1), "too deep"},
		{`{"a":1}x`, "not a single valid JSON value"},
	} {
		_, err := e.Execute(context.Background(), "echo", []byte(tt.in))
		if !errors.Is(err, isolation.ErrInvalidInput) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("input %.20q: %v, want ErrInvalidInput naming %q", tt.in, err, tt.want)
		}
	}
}
