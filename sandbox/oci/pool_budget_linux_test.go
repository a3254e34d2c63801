package oci

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// budgetTools makes n bundles of the probe tool in a root of their own.
func budgetTools(t *testing.T, n int) (root string, call func(tool, input string) sandbox.Call) {
	t.Helper()
	root = t.TempDir()
	_ = os.Chmod(root, 0o755)
	for i := range n {
		if err := makeBundle(root, fmt.Sprintf("t%d", i+1), env.probeBin); err != nil {
			t.Fatal(err)
		}
	}
	return root, func(tool, input string) sandbox.Call {
		return sandbox.Call{ID: uuid.NewString(), Tool: tool, Runtime: isolation.RequireContainerImage,
			Dir: filepath.Join(root, tool), Input: []byte(input), Limits: sandbox.Limits{Timeout: 10 * time.Second}.WithDefaults()}
	}
}

// containerDirs counts the containers of s that exist: their state dirs.
func containerDirs(s *Sandbox) int {
	n := 0
	ents, _ := os.ReadDir(s.cfg.StateRoot)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "axocoatl-") {
			n++
		}
	}
	return n
}

func readyByTool(s *Sandbox) map[string]int {
	m := map[string]int{}
	for _, st := range s.PoolStats() {
		m[st.Tool] = st.Ready
	}
	return m
}

// eventually polls cond until it holds or ctx ends.
func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPoolBudget: five tools with pools of 2 under a budget of 4 containers never hold more than
// 4 warm containers; the least recently used pool gives up its containers first; every tool still
// answers (cold when its pool is empty).
func TestPoolBudget(t *testing.T) {
	needContainers(t)
	root, call := budgetTools(t, 5)
	s := newSandbox(t, func(c *Config) {
		c.BundleRoot = root
		c.PoolSize = 2
		c.PoolMaxTotal = 4
		c.PoolMaxMemoryMB = -1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var peak atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // samples the containers that exist while only pools create them
		defer wg.Done()
		for {
			if n := int32(containerDirs(s)); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	for i := range 5 {
		if err := s.Prepare(ctx, call(fmt.Sprintf("t%d", i+1), "")); err != nil {
			t.Fatalf("Prepare t%d: %v", i+1, err)
		}
	}
	close(stop)
	wg.Wait()
	if p := peak.Load(); p > 4 {
		t.Errorf("%d containers existed at once; the budget is 4", p)
	}
	// t1 and t2 filled to 2; t3, t4 and t5 each took one from the least recently prepared pool
	// still holding one: t1, t1, t2.
	want := map[string]int{"t1": 0, "t2": 1, "t3": 1, "t4": 1, "t5": 1}
	if got := readyByTool(s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ready containers %v, want %v", got, want)
	}
	if n, _ := s.budget.Usage(); n != 4 {
		t.Fatalf("budget holds %d reservations, want 4", n)
	}

	// t1 runs cold (its pool is empty) and, now the most recently used, takes its fair share back
	// from the least recently used pool that has one: t2.
	for i := range 5 {
		tool := fmt.Sprintf("t%d", i+1)
		out, err := s.Run(ctx, call(tool, fmt.Sprintf(`{"op":"echo","i":%d}`, i)))
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if m := decode(t, out); m["echo"].(map[string]any)["i"] != float64(i) {
			t.Fatalf("%s: output %s", tool, out.Output)
		}
		if i == 0 {
			eventually(t, ctx, "t1 refilled from t2", func() bool {
				r := readyByTool(s)
				return r["t1"] == 1 && r["t2"] == 0
			})
		}
	}
	// Once the used containers are gone, only warm ones remain, within the budget.
	eventually(t, ctx, "used containers destroyed", func() bool {
		sum := 0
		for _, n := range readyByTool(s) {
			sum += n
		}
		return containerDirs(s) == sum
	})
	if n := containerDirs(s); n > 4 {
		t.Fatalf("%d containers after the calls; the budget is 4", n)
	}
}

// TestPoolIdleReleases: a pool unused for PoolIdle destroys its containers, gives its share of the
// budget back and stops its filler goroutine; the next call or Prepare brings it back.
func TestPoolIdleReleases(t *testing.T) {
	needContainers(t)
	root, call := budgetTools(t, 2)
	s := newSandbox(t, func(c *Config) {
		c.BundleRoot = root
		c.PoolSize = 2
		c.PoolMaxTotal = 2
		c.PoolIdle = 4 * time.Second // outlasts filling both pools on a loaded machine
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runtime.GC()
	base := runtime.NumGoroutine()
	for _, tool := range []string{"t1", "t2"} {
		if err := s.Prepare(ctx, call(tool, "")); err != nil {
			t.Fatal(err)
		}
	}
	if got := readyByTool(s); got["t1"] != 1 || got["t2"] != 1 {
		t.Fatalf("ready %v, want one each (budget 2, two pools)", got)
	}
	if n := runtime.NumGoroutine(); n < base+2 {
		t.Fatalf("%d goroutines with two pools filling, baseline %d: expected a filler per pool", n, base)
	}
	eventually(t, ctx, "pools drained, budget released, fillers gone", func() bool {
		n, mb := s.budget.Usage()
		return n == 0 && mb == 0 && containerDirs(s) == 0 && runtime.NumGoroutine() <= base
	})
	// t1 is gone from the budget: t2 alone gets all of it back.
	if err := s.Prepare(ctx, call("t2", "")); err != nil {
		t.Fatal(err)
	}
	if got := readyByTool(s); got["t2"] != 2 {
		t.Fatalf("ready %v: t2 should hold the whole budget of 2 once t1 went idle", got)
	}
	// A dormant pool's next call runs cold and restarts it.
	if _, err := s.Run(ctx, call("t1", `{}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "t1 refilled after its call", func() bool { return readyByTool(s)["t1"] == 1 })
}

// TestPoolStatsOnePerTool: a tool prepared with two memory limits has two pools; PoolStats
// reports the tool once with both summed, so that consumers keyed by tool (metrics, which drop
// a repeated label set) lose neither.
func TestPoolStatsOnePerTool(t *testing.T) {
	needContainers(t)
	root, call := budgetTools(t, 1)
	s := newSandbox(t, func(c *Config) { c.BundleRoot = root; c.PoolSize = 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, mb := range []int{128, 192} {
		c := call("t1", "")
		c.Limits.MemoryMB = mb
		if err := s.Prepare(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	st := s.PoolStats()
	if len(st) != 1 || st[0].Tool != "t1" || st[0].Ready != 2 || st[0].Size != 2 {
		t.Fatalf("pool stats %+v, want one t1 entry with 2 ready of 2", st)
	}
	if _, mb := s.budget.Usage(); mb != 128+192 {
		t.Fatalf("budget holds %d MB, want %d (each container reserves its memory limit)", mb, 128+192)
	}
}
