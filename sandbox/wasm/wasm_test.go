package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
)

// buildCache keeps guest modules across test runs (keyed by source hash), so only the first run
// on a machine pays for go build.
var buildCache = filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache")

var (
	guestOnce sync.Once
	guestPath string
	guestErr  error
)

// guest builds testdata/guest (a ~3.6 MB Go wasip1 tool whose input picks a behaviour).
func guest(tb testing.TB) string {
	tb.Helper()
	guestOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		guestPath, guestErr = wasmbuild.Cached(ctx, "testdata/guest", buildCache, wasmbuild.Config{})
	})
	if guestErr != nil {
		tb.Fatalf("building the guest: %v", guestErr)
	}
	return guestPath
}

func newSandbox(tb testing.TB, cfg Config) *Sandbox {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func call(module string, input any, lim sandbox.Limits) sandbox.Call {
	b, err := json.Marshal(input)
	if err != nil {
		panic(err)
	}
	return sandbox.Call{ID: "test", Tool: "guest", Runtime: isolation.RequireWasm, Dir: filepath.Dir(module),
		Entrypoint: module, Input: b, Limits: lim.WithDefaults()}
}

func TestRun(t *testing.T) {
	mod := guest(t)
	s := newSandbox(t, Config{})
	tests := []struct {
		name  string
		input map[string]any
		lim   sandbox.Limits
		// check inspects a successful outcome; wantErr is the error class otherwise.
		check   func(t *testing.T, out sandbox.Outcome)
		wantErr error
	}{
		{name: "greets", input: map[string]any{"name": "x"}, check: func(t *testing.T, out sandbox.Outcome) {
			wantJSON(t, out, "greeting", "Hello, x!")
		}},
		{name: "missing output", input: map[string]any{"mode": "nooutput"}, check: func(t *testing.T, out sandbox.Outcome) {
			if out.ExitCode != 0 || out.Output != nil {
				t.Fatalf("want exit 0 and nil output, got %d %q", out.ExitCode, out.Output)
			}
		}},
		{name: "invalid output passed through", input: map[string]any{"mode": "invalid"}, check: func(t *testing.T, out sandbox.Outcome) {
			if string(out.Output) != "{not json" {
				t.Fatalf("output %q", out.Output)
			}
		}},
		{name: "output at the limit", input: map[string]any{"mode": "big", "size": 998}, lim: sandbox.Limits{MaxOutputBytes: 1000},
			check: func(t *testing.T, out sandbox.Outcome) {
				if len(out.Output) != 1000 {
					t.Fatalf("output is %d bytes", len(out.Output))
				}
			}},
		{name: "output too large", input: map[string]any{"mode": "big", "size": 5000}, lim: sandbox.Limits{MaxOutputBytes: 1000},
			wantErr: isolation.ErrOutputTooLarge},
		{name: "exit code and stderr tail", input: map[string]any{"mode": "fail", "code": 7, "lines": 2000}, lim: sandbox.Limits{MaxStderrBytes: 200},
			check: func(t *testing.T, out sandbox.Outcome) {
				if out.ExitCode != 7 {
					t.Fatalf("exit code %d", out.ExitCode)
				}
				if len(out.Stderr) > 200+len("…") || !strings.HasSuffix(out.Stderr, "the last words\n") || !strings.HasPrefix(out.Stderr, "…") {
					t.Fatalf("stderr tail %q", out.Stderr)
				}
			}},
		{name: "stdout has its own tail", input: map[string]any{"mode": "stdout"}, check: func(t *testing.T, out sandbox.Outcome) {
			if !strings.Contains(out.Stdout, "printed on stdout") || strings.Contains(out.Stderr, "printed on stdout") {
				t.Fatalf("stdout %q, stderr %q", out.Stdout, out.Stderr)
			}
		}},
		{name: "host files are invisible", input: map[string]any{"mode": "readfile", "path": "/etc/passwd"}, check: func(t *testing.T, out sandbox.Outcome) {
			m := wantJSON(t, out, "content", "")
			if m["error"] == nil {
				t.Fatalf("reading /etc/passwd did not fail: %v", m)
			}
		}},
		{name: "no escape by dot-dot", input: map[string]any{"mode": "readfile", "path": "/axocoatl/../etc/passwd"}, check: func(t *testing.T, out sandbox.Outcome) {
			wantJSON(t, out, "content", "")
		}},
		{name: "input is readable", input: map[string]any{"mode": "readfile", "path": "/axocoatl/input.json"}, check: func(t *testing.T, out sandbox.Outcome) {
			wantJSON(t, out, "content", `{"mode":"readfile","path":"/axocoatl/input.json"}`)
		}},
		{name: "input is read-only", input: map[string]any{"mode": "writeinput"}, check: func(t *testing.T, out sandbox.Outcome) {
			m := wantJSON(t, out, "version", "1")
			if m["error"] == "<nil>" {
				t.Fatalf("writing input.json succeeded")
			}
		}},
		{name: "root holds only axocoatl", input: map[string]any{"mode": "listdir", "path": "/axocoatl"}, check: func(t *testing.T, out sandbox.Outcome) {
			m := wantJSON(t, out, "version", "1")
			if fmt.Sprint(m["names"]) != "[input.json]" {
				t.Fatalf("/axocoatl holds %v", m["names"])
			}
		}},
		{name: "no host env", input: map[string]any{"mode": "env"}, check: func(t *testing.T, out sandbox.Outcome) {
			m := wantJSON(t, out, "version", "1")
			if env, _ := m["env"].([]any); len(env) != 0 {
				t.Fatalf("guest sees env %v", env)
			}
			if fmt.Sprint(m["args"]) != "[guest]" {
				t.Fatalf("args %v", m["args"])
			}
		}},
		{name: "memory bomb", input: map[string]any{"mode": "bomb"}, lim: sandbox.Limits{MemoryMB: 32}, wantErr: isolation.ErrMemoryLimit},
		{name: "spinning guest times out", input: map[string]any{"mode": "spin"}, lim: sandbox.Limits{Timeout: 200 * time.Millisecond}, wantErr: isolation.ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := s.Run(context.Background(), call(mod, tt.input, tt.lim))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("want %v, got %v (outcome %+v)", tt.wantErr, err, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if out.Backend != Backend {
				t.Errorf("backend %q", out.Backend)
			}
			tt.check(t, out)
		})
	}
	if n := s.pool.live.Load(); n != 0 {
		t.Errorf("%d linear memories were not released", n)
	}
}

func wantJSON(t *testing.T, out sandbox.Outcome, key, want string) map[string]any {
	t.Helper()
	if out.ExitCode != 0 {
		t.Fatalf("exit code %d, stderr %q", out.ExitCode, out.Stderr)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Output, &m); err != nil {
		t.Fatalf("output %q: %v", out.Output, err)
	}
	if got := fmt.Sprint(m[key]); got != want && !(want == "" && m[key] == nil) {
		t.Fatalf("%s = %q, want %q (output %s)", key, got, want, out.Output)
	}
	return m
}

// Run reports the tool's exit (sandbox.ToolExited) before it returns, in both execution paths
// (the command module and the snapshot-mode reactor), so that a traced call's teardown starts there.
func TestRunReportsToolExit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		module func(testing.TB) string
	}{{"command", guest}, {"reactor", reactor}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t, Config{})
			var exits atomic.Int32
			ctx := sandbox.WithExitHook(context.Background(), func() { exits.Add(1) })
			out, err := s.Run(ctx, call(tc.module(t), map[string]any{"name": "exit"}, sandbox.Limits{}))
			if err != nil || out.ExitCode != 0 {
				t.Fatalf("Run = %+v, %v", out, err)
			}
			if exits.Load() == 0 {
				t.Fatal("Run returned without reporting the tool's exit")
			}
		})
	}
}
