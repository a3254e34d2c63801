package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm/internal/wasmbin"
)

// handModule assembles a module with one memory of minPages and a _start whose body is code.
func handModule(minPages byte, code ...byte) []byte {
	sec := func(id byte, payload ...byte) []byte { return append([]byte{id, byte(len(payload))}, payload...) }
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, sec(1, 1, 0x60, 0, 0)...)                            // type: func() -> ()
	m = append(m, sec(3, 1, 0)...)                                     // function 0: type 0
	m = append(m, sec(5, 1, 0, 0x80|minPages&0x7f, minPages>>7)...)    // memory min
	m = append(m, sec(7, 1, 6, '_', 's', 't', 'a', 'r', 't', 0, 0)...) // export _start
	body := append([]byte{0}, code...)                                 // no locals
	body = append(body, 0x0b)
	m = append(m, sec(10, append([]byte{1, byte(len(body))}, body...)...)...)
	return m
}

func writeModule(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.wasm")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHandWrittenModules(t *testing.T) {
	s := newSandbox(t, Config{})
	// memory.grow(2000 pages); if it failed (-1): unreachable.
	growOrTrap := []byte{0x41, 0xd0, 0x0f, 0x40, 0x00, 0x41, 0x7f, 0x46, 0x04, 0x40, 0x00, 0x0b}
	tests := []struct {
		name    string
		mod     []byte
		lim     sandbox.Limits
		wantErr error
		wantOut sandbox.Outcome
	}{
		{name: "declared memory over the limit", mod: handModule(200, 0x01), lim: sandbox.Limits{MemoryMB: 8}, wantErr: isolation.ErrMemoryLimit},
		{name: "declared memory under the limit", mod: handModule(100, 0x01), lim: sandbox.Limits{MemoryMB: 8}, wantOut: sandbox.Outcome{Backend: Backend}},
		{name: "failed grow traps", mod: handModule(1, growOrTrap...), lim: sandbox.Limits{MemoryMB: 64}, wantErr: isolation.ErrMemoryLimit},
		{name: "grow within the limit", mod: handModule(1, growOrTrap...), lim: sandbox.Limits{MemoryMB: 200}, wantOut: sandbox.Outcome{Backend: Backend}},
		{name: "trap is a failed tool", mod: handModule(1, 0x00), wantOut: sandbox.Outcome{ExitCode: 1, Backend: Backend}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeModule(t, tt.mod)
			out, err := s.Run(context.Background(), call(p, map[string]any{}, tt.lim))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("want %v, got %v", tt.wantErr, err)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.ExitCode != tt.wantOut.ExitCode || out.Output != nil || out.Backend != tt.wantOut.Backend {
				t.Fatalf("outcome %+v", out)
			}
		})
	}
}

func TestConcurrentCalls(t *testing.T) {
	mod := guest(t)
	// Calls queue for as long as it takes: this test is about concurrent calls, not the queue's
	// bounds (TestQueue), and under -race a call takes long.
	s := newSandbox(t, Config{QueueTimeout: time.Hour})
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("caller-%d", i)
			out, err := s.Run(context.Background(), call(mod, map[string]any{"name": name}, sandbox.Limits{}))
			if err != nil {
				errs <- err
				return
			}
			var m map[string]string
			if err := json.Unmarshal(out.Output, &m); err != nil || m["greeting"] != "Hello, "+name+"!" {
				errs <- fmt.Errorf("call %d: output %s (%v)", i, out.Output, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := s.pool.live.Load(); n != 0 {
		t.Errorf("%d linear memories were not released", n)
	}
}

// TestTimeoutAndCancel stops runaway guests (a spinning Go tool, a sleeping Go tool, a bare
// wasm loop) at their deadline and on cancellation, with the stop flag and with wazero's checks.
func TestTimeoutAndCancel(t *testing.T) {
	mod := guest(t)
	bare := writeModule(t, handModule(1, 0x03, 0x40, 0x0c, 0x00, 0x0b)) // loop br 0 end
	for _, cfg := range []struct {
		name string
		cfg  Config
	}{{"stop flag", Config{}}, {"engine checks", Config{engineDeadlineChecks: true}}} {
		s := newSandbox(t, cfg.cfg)
		for _, tc := range []struct {
			name string
			call sandbox.Call
		}{
			{"go spin", call(mod, map[string]any{"mode": "spin"}, sandbox.Limits{Timeout: time.Minute})},
			{"go sleep", call(mod, map[string]any{"mode": "sleep"}, sandbox.Limits{Timeout: time.Minute})},
			{"bare loop", call(bare, map[string]any{}, sandbox.Limits{Timeout: time.Minute})},
		} {
			t.Run(cfg.name+"/"+tc.name, func(t *testing.T) {
				bg := context.Background()
				if err := s.Prepare(bg, tc.call); err != nil {
					t.Fatal(err)
				}
				m, err := s.module(bg, tc.call.Entrypoint)
				// The bare loop imports no sched_yield: it always keeps wazero's checks.
				if err != nil || m.stoppable != (!cfg.cfg.engineDeadlineChecks && tc.name != "bare loop") {
					t.Fatalf("module: stoppable %v, %v", m.stoppable, err)
				}
				ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
				defer cancel()
				start := time.Now()
				_, err = s.Run(ctx, tc.call)
				if !errors.Is(err, isolation.ErrTimeout) {
					t.Fatalf("deadline: want ErrTimeout, got %v", err)
				}
				t.Logf("stopped %v after the deadline", time.Since(start)-100*time.Millisecond)

				ctx, cancel = context.WithCancel(bg)
				time.AfterFunc(100*time.Millisecond, cancel)
				_, err = s.Run(ctx, tc.call)
				if !errors.Is(err, context.Canceled) || errors.Is(err, isolation.ErrTimeout) {
					t.Fatalf("cancel: want context.Canceled, got %v", err)
				}
				// The sandbox still works afterwards, and nothing leaked.
				if _, err := s.Run(bg, call(mod, map[string]any{"name": "after"}, sandbox.Limits{})); err != nil {
					t.Fatal(err)
				}
				if n := s.pool.live.Load(); n != 0 {
					t.Errorf("%d linear memories were not released", n)
				}
			})
		}
	}
}

// TestRunawayGuestsStayPreemptible runs more spinning guests than there are Ps while the
// garbage collector runs: compiled wasm is not preempted, so without the guests' periodic trips
// through Go (sched_yield every YieldBudget loop iterations) the stop-the-world, and the timers
// that stop the guests, would wait forever. The watchdog only detects that hang.
func TestRunawayGuestsStayPreemptible(t *testing.T) {
	n := 2 * runtime.GOMAXPROCS(0)
	s := newSandbox(t, Config{MaxConcurrency: n})
	for _, mod := range []string{guest(t), reactor(t)} {
		c := call(mod, map[string]any{"mode": "spin"}, sandbox.Limits{Timeout: 300 * time.Millisecond})
		if err := s.Prepare(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, n)
		for i := 0; i < n; i++ {
			go func() {
				_, err := s.Run(context.Background(), c)
				done <- err
			}()
		}
		gcDone := make(chan struct{})
		go func() {
			defer close(gcDone)
			for i := 0; i < 5; i++ {
				runtime.GC()
				time.Sleep(20 * time.Millisecond)
			}
		}()
		watchdog := time.After(30 * time.Second)
		for i := 0; i < n; i++ {
			select {
			case err := <-done:
				if !errors.Is(err, isolation.ErrTimeout) {
					t.Errorf("want ErrTimeout, got %v", err)
				}
			case <-watchdog:
				t.Fatal("spinning guests were never stopped: the process is stuck")
			}
		}
		select {
		case <-gcDone:
		case <-watchdog:
			t.Fatal("the garbage collector could not stop the world")
		}
	}
}

func TestChangedModuleRecompiles(t *testing.T) {
	ctx := context.Background()
	v2, err := wasmbuild.Cached(ctx, "testdata/guest", buildCache, wasmbuild.Config{Ldflags: "-X main.version=2"})
	if err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t, Config{CacheDir: t.TempDir()})
	p := filepath.Join(t.TempDir(), "tool.wasm")
	version := func() string {
		t.Helper()
		out, err := s.Run(ctx, call(p, map[string]any{"name": "v"}, sandbox.Limits{}))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]string
		json.Unmarshal(out.Output, &m)
		return m["version"]
	}
	for i, src := range []string{guest(t), v2, guest(t)} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		// Same size and mtime are possible within a clock tick: the inode changes with the rename.
		if err := os.WriteFile(p+".new", b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".new", p); err != nil {
			t.Fatal(err)
		}
		want := []string{"1", "2", "1"}[i]
		if got := version(); got != want {
			t.Fatalf("step %d: version %q, want %q", i, got, want)
		}
	}
}

func TestSupportsAndClose(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range isolation.Requirements() {
		reason := s.Supports(r)
		if (reason == "") != (r == isolation.RequireWasm) {
			t.Errorf("Supports(%s) = %q", r, reason)
		}
	}
	c := call(guest(t), map[string]any{"name": "x"}, sandbox.Limits{})
	py := c
	py.Runtime = isolation.RequirePython
	if _, err := s.Run(context.Background(), py); !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Errorf("Python call: %v", err)
	}
	if a := s.Probe(context.Background()); !a.Available {
		t.Errorf("probe: %+v", a)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Run(context.Background(), c); err == nil {
		t.Fatal("Run after Close succeeded")
	}
}

func TestMergeData(t *testing.T) {
	bin, err := os.ReadFile(guest(t))
	if err != nil {
		t.Fatal(err)
	}
	before, err := wasmbin.Inspect(bin)
	if err != nil {
		t.Fatal(err)
	}
	merged, ok, err := wasmbin.MergeData(bin, segmentGap)
	if err != nil || !ok {
		t.Fatalf("merge: %v %v", ok, err)
	}
	after, err := wasmbin.Inspect(merged)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("data segments: %d → %d", before.DataSegments, after.DataSegments)
	if after.DataSegments >= before.DataSegments || after.MinPages != before.MinPages {
		t.Fatalf("before %+v after %+v", before, after)
	}
	if _, _, err := wasmbin.MergeData([]byte("not wasm"), 0); !errors.Is(err, wasmbin.ErrFormat) {
		t.Fatalf("garbage: %v", err)
	}
}
