package wasm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// Hand-written modules: cheap to compile, so that these tests stay quick under -race.
var (
	nopModule  = handModule(1, 0x01)                         // nop: exits 0 without output
	loopModule = handModule(1, 0x03, 0x40, 0x0c, 0x00, 0x0b) // loop br 0 end: runs until stopped
	// i32.add on an empty stack: well formed, but fails validation when compiled.
	brokenModule = handModule(1, 0x6a)
)

// writeCopies writes n tool folders holding the same module content, as tools that share one
// .wasm do.
func writeCopies(t *testing.T, b []byte, n int) []string {
	t.Helper()
	root := t.TempDir()
	var paths []string
	for i := 0; i < n; i++ {
		p := filepath.Join(root, fmt.Sprintf("tool-%d", i), "m.wasm")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// TestConcurrentFirstCalls calls eight folders sharing one broken module and eight sharing a good
// one from 16 goroutines, all first calls at once: before the fix, the module cache wrote its
// map outside its lock (go test -race reports it; without -race, "fatal error: concurrent map
// writes" within tens of thousands of calls). A module that does not compile is ErrInvalidTool
// naming the tool and the compile error, every time.
func TestConcurrentFirstCalls(t *testing.T) {
	s := newSandbox(t, Config{})
	broken := writeCopies(t, brokenModule, 8)
	good := writeCopies(t, nopModule, 8)
	const workers, rounds = 16, 250
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := make(chan struct{})
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for r := 0; r < rounds; r++ {
				i := (w + r) % 8
				c := call(broken[i], map[string]any{}, sandbox.Limits{})
				c.Tool = fmt.Sprintf("broken-%d", i)
				_, err := s.Run(context.Background(), c)
				var ie *isolation.Error
				if !errors.Is(err, isolation.ErrInvalidTool) || !errors.As(err, &ie) || ie.Tool != c.Tool ||
					!strings.Contains(err.Error(), "compile") {
					errs <- fmt.Errorf("broken module: %v, want ErrInvalidTool naming %s and the compile error", err, c.Tool)
					return
				}
				out, err := s.Run(context.Background(), call(good[i], map[string]any{}, sandbox.Limits{}))
				if err != nil || out.ExitCode != 0 {
					errs <- fmt.Errorf("good module: %v %+v", err, out)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// One entry per content (the broken one included: it fails again without compiling).
	if len(s.modules) != 2 || len(s.files) != 16 {
		t.Errorf("%d modules and %d files cached, want 2 and 16", len(s.modules), len(s.files))
	}
}

// TestInvalidModules: files that are not modules that compile are the operator's fault
// (ErrInvalidTool), not an internal error.
func TestInvalidModules(t *testing.T) {
	s := newSandbox(t, Config{})
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		make func(p string) error
	}{
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("not wasm at all"), 0o644) }},
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o644) }},
		{"fails validation", func(p string) error { return os.WriteFile(p, brokenModule, 0o644) }},
		{"truncated", func(p string) error { return os.WriteFile(p, nopModule[:len(nopModule)-3], 0o644) }},
		{"missing", func(string) error { return nil }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".wasm")
			if err := tc.make(p); err != nil {
				t.Fatal(err)
			}
			c := call(p, map[string]any{}, sandbox.Limits{})
			c.Tool = "bad-tool"
			for _, run := range []func() error{
				func() error { return s.Prepare(context.Background(), c) },
				func() error { _, err := s.Run(context.Background(), c); return err },
			} {
				err := run()
				if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), `"bad-tool"`) {
					t.Fatalf("got %v, want ErrInvalidTool naming the tool", err)
				}
			}
		})
	}
}

// waitFor polls cond (a state another goroutine reaches) for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// occupy runs the loop module in the sandbox's only slot until the returned function is called
// (which waits for the call to end).
func occupy(t *testing.T, s *Sandbox, loop string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Run(ctx, call(loop, map[string]any{}, sandbox.Limits{Timeout: time.Minute}))
		done <- err
	}()
	waitFor(t, "the loop to hold the slot", func() bool { return len(s.slots) == cap(s.slots) })
	return func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("the occupying call: %v, want context.Canceled", err)
		}
	}
}

// TestQueue: a call's timeout starts when it has its instance slot (time queued is not the
// tool's), the queue is bounded in length and in time, and what does not fit is ErrBusy.
func TestQueue(t *testing.T) {
	ctx := context.Background()
	loop := writeModule(t, loopModule)
	nop := writeModule(t, nopModule)

	t.Run("timeout starts with the slot", func(t *testing.T) {
		s := newSandbox(t, Config{MaxConcurrency: 1, QueueTimeout: time.Minute})
		stop := occupy(t, s, loop)
		done := make(chan error, 1)
		go func() {
			_, err := s.Run(ctx, call(nop, map[string]any{}, sandbox.Limits{Timeout: 50 * time.Millisecond}))
			done <- err
		}()
		waitFor(t, "the call to queue", func() bool { return s.queued.Load() == 1 })
		time.Sleep(200 * time.Millisecond) // queued for four times its timeout
		stop()
		if err := <-done; err != nil {
			t.Fatalf("a call queued longer than its timeout: %v, want success", err)
		}
	})

	t.Run("queue deadline", func(t *testing.T) {
		s := newSandbox(t, Config{MaxConcurrency: 1, QueueTimeout: 100 * time.Millisecond})
		stop := occupy(t, s, loop)
		defer stop()
		start := time.Now()
		_, err := s.Run(ctx, call(nop, map[string]any{}, sandbox.Limits{Timeout: time.Minute}))
		if !errors.Is(err, isolation.ErrBusy) || !strings.Contains(err.Error(), "waited 100ms") {
			t.Fatalf("got %v after %s, want ErrBusy at the queue deadline", err, time.Since(start))
		}
	})

	t.Run("queue full", func(t *testing.T) {
		s := newSandbox(t, Config{MaxConcurrency: 1, MaxQueued: 2, QueueTimeout: time.Minute})
		stop := occupy(t, s, loop)
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.Run(ctx, call(nop, map[string]any{}, sandbox.Limits{})); err != nil {
					t.Errorf("queued call: %v", err)
				}
			}()
		}
		waitFor(t, "two calls to queue", func() bool { return s.queued.Load() == 2 })
		_, err := s.Run(ctx, call(nop, map[string]any{}, sandbox.Limits{}))
		if !errors.Is(err, isolation.ErrBusy) {
			t.Errorf("third queued call: %v, want ErrBusy", err)
		}
		stop()
		wg.Wait()
	})

	t.Run("no queue", func(t *testing.T) {
		s := newSandbox(t, Config{MaxConcurrency: 1, MaxQueued: -1})
		stop := occupy(t, s, loop)
		defer stop()
		if _, err := s.Run(ctx, call(nop, map[string]any{}, sandbox.Limits{})); !errors.Is(err, isolation.ErrBusy) {
			t.Errorf("call with every slot taken and no queue: %v, want ErrBusy", err)
		}
	})

	t.Run("caller gives up while queued", func(t *testing.T) {
		s := newSandbox(t, Config{MaxConcurrency: 1, QueueTimeout: time.Minute})
		stop := occupy(t, s, loop)
		defer stop()
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := s.Run(cctx, call(nop, map[string]any{}, sandbox.Limits{})); !errors.Is(err, isolation.ErrTimeout) {
			t.Errorf("caller's deadline while queued: %v, want ErrTimeout", err)
		}
		if n := s.queued.Load(); n != 0 {
			t.Errorf("%d calls still counted as queued", n)
		}
	})
}

// instantiable reports whether a compiled module can still be instantiated (it cannot once
// closed).
func instantiable(s *Sandbox, m *module) bool {
	mod, err := s.rtChecked.InstantiateModule(context.Background(), m.compiled, wazero.NewModuleConfig().WithName("").WithStartFunctions())
	if err == nil {
		mod.Close(context.Background())
	}
	return err == nil
}

// TestModuleCacheIsBounded compiles more distinct modules than the cache holds: the least
// recently used are closed (a module in use only once its calls end), the cache stays within its
// bounds, and the evicted tools still run (compiled again).
func TestModuleCacheIsBounded(t *testing.T) {
	ctx := context.Background()
	const max = 3
	s := newSandbox(t, Config{MaxModules: max})
	var paths []string
	for i := 0; i <= max; i++ {
		paths = append(paths, writeModule(t, handModule(byte(1+i), 0x01))) // distinct contents
	}
	loop := writeModule(t, loopModule)

	// The loop module is in use while max more modules are compiled: it leaves the cache but
	// stays open until its call ends.
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := s.Run(lctx, call(loop, map[string]any{}, sandbox.Limits{Timeout: time.Minute}))
		done <- err
	}()
	waitFor(t, "the loop to run", func() bool { return len(s.slots) == 1 })
	lm, err := s.module(ctx, loop)
	if err != nil {
		t.Fatal(err)
	}
	var first []*module
	for _, p := range paths[:max] {
		out, err := s.Run(ctx, call(p, map[string]any{}, sandbox.Limits{}))
		if err != nil || out.ExitCode != 0 {
			t.Fatalf("%s: %v %+v", p, err, out)
		}
		m, _ := s.module(ctx, p)
		first = append(first, m)
	}
	s.mu.Lock()
	evicted, refs := lm.evicted, lm.refs
	s.mu.Unlock()
	if !evicted || refs != 1 || !instantiable(s, lm) {
		t.Fatalf("module in use: evicted %v, refs %d, open %v; want evicted, 1 ref, still open", evicted, refs, instantiable(s, lm))
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the evicted module's call: %v", err)
	}
	if instantiable(s, lm) {
		t.Fatal("an evicted module was not closed when its last call ended")
	}

	// One more: the least recently used of the first ones goes, closed at once.
	if _, err := s.Run(ctx, call(paths[max], map[string]any{}, sandbox.Limits{})); err != nil {
		t.Fatal(err)
	}
	if !first[0].evicted || instantiable(s, first[0]) || first[1].evicted {
		t.Fatalf("after %d modules: oldest evicted %v (open %v), next evicted %v", max+1, first[0].evicted, instantiable(s, first[0]), first[1].evicted)
	}
	s.mu.Lock()
	nm, nf := len(s.modules), len(s.files)
	s.mu.Unlock()
	if nm != max || nf != max || s.lru.Len() != max {
		t.Fatalf("cache holds %d modules, %d files, %d in LRU order; want %d", nm, nf, s.lru.Len(), max)
	}
	// The evicted tool still runs: compiled again, into a new module.
	if out, err := s.Run(ctx, call(paths[0], map[string]any{}, sandbox.Limits{})); err != nil || out.ExitCode != 0 {
		t.Fatalf("evicted tool: %v %+v", err, out)
	}
	if m, _ := s.module(ctx, paths[0]); m == first[0] || m.evicted {
		t.Fatal("the evicted tool was not compiled again")
	}

	// A byte bound keeps only the most recently used module when each is over it.
	sb := newSandbox(t, Config{MaxModuleBytes: 1})
	for _, p := range paths {
		if _, err := sb.Run(ctx, call(p, map[string]any{}, sandbox.Limits{})); err != nil {
			t.Fatal(err)
		}
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if len(sb.modules) != 1 || sb.moduleBytes <= 0 {
		t.Fatalf("byte-bounded cache holds %d modules (%d bytes), want 1", len(sb.modules), sb.moduleBytes)
	}
}
