package microvm_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// Pooled VMs of all shapes share the pool budget: three shapes with pools of 2 under a budget of
// 2 VMs never run more than 2 VMMs, and the least recently used shape's pool gives its VMs up
// first.
func TestPoolBudget(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 2, PoolMaxTotal: 2, PoolMaxMemoryMB: -1, MaxShapes: 4})
	dir, entry := tool(t, "main.sh", shEcho, 0o644)
	shapeCall := func(mb int) sandbox.Call {
		c := call("p", isolation.RequireShell, dir, entry, `{}`, 20*time.Second)
		c.Limits.MemoryMB = mb
		return c
	}
	var peak atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // samples the VMMs that exist while only pools boot them
		defer wg.Done()
		for {
			if n := int32(len(testutil.QemuPIDs(s.RunDir()))); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	ready := func() map[string]int {
		m := map[string]int{}
		for _, st := range s.PoolStats() {
			m[st.Tool] = st.Ready
		}
		return m
	}
	wait := func(want map[string]int) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			got := ready()
			ok := true
			for k, n := range want {
				ok = ok && got[k] == n
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("pools %v, want %v", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	const a, b, c = "vm-1cpu-256mb", "vm-1cpu-320mb", "vm-1cpu-384mb"
	steps := []struct {
		mb   int
		want map[string]int
	}{
		{256, map[string]int{a: 2}},
		{320, map[string]int{a: 1, b: 1}},       // b below its fair share (1): a gives one up
		{384, map[string]int{a: 0, b: 1, c: 1}}, // a, the least recently used, again
	}
	for _, st := range steps {
		if err := s.Prepare(context.Background(), shapeCall(st.mb)); err != nil {
			t.Fatal(err)
		}
		wait(st.want)
	}
	// Nothing more boots: each pool is at its share of a full budget.
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Fatalf("%d VMMs ran at once; the budget is 2", p)
	}
	wait(map[string]int{a: 0, b: 1, c: 1})
	// A call of the emptied shape still answers (cold).
	o, err := s.Run(context.Background(), shapeCall(256))
	if err != nil || o.ExitCode != 0 {
		t.Fatalf("cold call of the emptied shape: %+v, %v", o, err)
	}
}
