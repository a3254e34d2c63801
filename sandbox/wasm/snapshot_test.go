package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm/internal/wasmbin"
)

var (
	reactorOnce sync.Once
	reactorPath string
	reactorErr  error
)

// reactor builds testdata/reactor with -buildmode=c-shared: a Go tool exporting run.
func reactor(tb testing.TB) string {
	tb.Helper()
	reactorOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		reactorPath, reactorErr = wasmbuild.Cached(ctx, "testdata/reactor", buildCache, wasmbuild.Config{BuildMode: "c-shared"})
	})
	if reactorErr != nil {
		tb.Fatalf("building the reactor: %v", reactorErr)
	}
	return reactorPath
}

// TestSnapshotIsolation: every call of a reactor starts from the state captured after
// _initialize, whatever the previous calls left in package variables and on the heap; the
// results match a from-scratch run (_initialize then run in every call).
func TestSnapshotIsolation(t *testing.T) {
	mod := reactor(t)
	bin, err := os.ReadFile(mod)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := wasmbin.IsReactor(bin); err != nil || !ok {
		t.Fatalf("IsReactor: %v %v", ok, err)
	}
	ctx := context.Background()
	for _, cfg := range []struct {
		name     string
		cfg      Config
		snapshot bool
	}{{"snapshot", Config{}, true}, {"from scratch", Config{noSnapshots: true}, false}} {
		t.Run(cfg.name, func(t *testing.T) {
			s := newSandbox(t, cfg.cfg)
			m, err := s.module(ctx, mod)
			if err != nil {
				t.Fatal(err)
			}
			if (m.snap != nil) != cfg.snapshot || !m.reactor {
				t.Fatalf("snapshot mode %v, reactor %v", m.snap != nil, m.reactor)
			}
			for i, in := range []map[string]any{
				{"name": "a"}, {"mode": "scribble"}, {"name": "b"}, {"mode": "scribble"}, {"name": "c"},
			} {
				out, err := s.Run(ctx, call(mod, in, sandbox.Limits{}))
				if err != nil || out.ExitCode != 0 {
					t.Fatalf("call %d: %v %+v", i, err, out)
				}
				var got struct {
					Calls       int    `json:"calls"`
					Initialised string `json:"initialised"`
					Greeting    string `json:"greeting"`
				}
				if err := json.Unmarshal(out.Output, &got); err != nil {
					t.Fatalf("call %d: %s: %v", i, out.Output, err)
				}
				if got.Calls != 1 || got.Initialised != "at init" {
					t.Fatalf("call %d saw state of an earlier call: %s", i, out.Output)
				}
				if name, ok := in["name"]; ok && got.Greeting != "Hello, "+name.(string)+"!" {
					t.Fatalf("call %d: %s", i, out.Output)
				}
			}
			out, err := s.Run(ctx, call(mod, map[string]any{"mode": "fail", "code": 7}, sandbox.Limits{}))
			if err != nil || out.ExitCode != 7 {
				t.Fatalf("fail: %v %+v", err, out)
			}
			_, err = s.Run(ctx, call(mod, map[string]any{"mode": "bomb"}, sandbox.Limits{MemoryMB: 32}))
			if !errors.Is(err, isolation.ErrMemoryLimit) {
				t.Fatalf("bomb: want ErrMemoryLimit, got %v", err)
			}
			tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			if _, err := s.Run(tctx, call(mod, map[string]any{"mode": "spin"}, sandbox.Limits{})); !errors.Is(err, isolation.ErrTimeout) {
				t.Fatalf("spin: want ErrTimeout, got %v", err)
			}
			if out, err := s.Run(ctx, call(mod, map[string]any{"name": "after"}, sandbox.Limits{})); err != nil || out.Output == nil {
				t.Fatalf("after the timeout: %v %+v", err, out)
			}
			if n := s.pool.live.Load(); n != 0 {
				t.Errorf("%d linear memories were not released", n)
			}
		})
	}
}
