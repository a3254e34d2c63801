package oci

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
)

// runningMemoryLimit starts run (a call of the probe tool spinning until ctx ends) and returns
// the memory limit, in bytes, of the one container it creates under s's cgroup parent, read from
// the host's cgroup files while the container runs ("max" on v2 is -1).
func runningMemoryLimit(t *testing.T, s *Sandbox, run func(ctx context.Context)) int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	defer func() { cancel(); <-done }()
	parent := memoryCgroupDir("/" + s.cfg.CgroupParent)
	file := "memory.limit_in_bytes"
	if cgroupV2() {
		file = "memory.max"
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(parent)
		for _, e := range ents {
			dir := filepath.Join(parent, e.Name())
			// The container's init joins its cgroup before the limits are set; they are in place
			// once the init has become the tool.
			if !e.IsDir() || !runsTool(dir) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			v := strings.TrimSpace(string(b))
			if v == "max" {
				return -1
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s: %q", file, v)
			}
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no running container appeared under " + parent)
	return 0
}

// runsTool reports whether a process in the cgroup dir is the probe tool (/tool).
func runsTool(dir string) bool {
	procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, pid := range strings.Fields(string(procs)) {
		cmd, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		if strings.HasPrefix(string(cmd), "/tool\x00") {
			return true
		}
	}
	return false
}

// unlimited is what a cgroup with no memory limit reads: v1's page-rounded int64 maximum, v2's
// "max".
func unlimited(n int64) bool { return n < 0 || n >= 1<<62 }

// A tool's memory_mb above the operator's ceiling gives its container the ceiling, read from the
// container's own cgroup; a huge MemoryMB passed to the tier directly gives it a bounded limit,
// never none (2^44 MB used to wrap to 0 bytes: no limit at all) and never a failed call (2^43 MB
// wrapped negative).
func TestMemoryCeilingInCgroup(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, func(c *Config) { c.PoolSize = -1 })

	name := "probe-greedy-" + strconv.Itoa(os.Getpid())
	if err := makeBundle(env.toolsDir, name, env.probeBin); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(env.toolsDir, name)) })
	if err := os.WriteFile(filepath.Join(env.toolsDir, name, "tool.json"), []byte(`{"runtime":"ContainerImage","memory_mb":2048}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(env.toolsDir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{s}})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("memory_mb 2048 gets the 1024 MB ceiling", func(t *testing.T) {
		var res *executor.Result
		got := runningMemoryLimit(t, s, func(ctx context.Context) {
			e.Execute(ctx, name, []byte(`{"op":"spin"}`))
		})
		if got != int64(executor.DefaultMaxMemoryMB(isolation.TierOCI))<<20 {
			t.Fatalf("container memory limit %d bytes, want the Oci ceiling %d MB", got, executor.DefaultMaxMemoryMB(isolation.TierOCI))
		}
		res, err = e.Execute(context.Background(), name, []byte(`{"op":"echo"}`))
		if err != nil {
			t.Fatal(err)
		}
		if res.Limits.MemoryMB != 1024 || len(res.Limits.Clamped) != 1 || res.Limits.Clamped[0] != (executor.Clamp{Limit: "memory_mb", Asked: 2048, Granted: 1024}) {
			t.Fatalf("result limits %+v", res.Limits)
		}
	})
	for _, mb := range []int{17592186044416, 8796093022208} {
		t.Run("MemoryMB "+strconv.Itoa(mb)+" given to the tier directly", func(t *testing.T) {
			got := runningMemoryLimit(t, s, func(ctx context.Context) {
				c := probeCall(`{"op":"spin"}`)
				c.Limits.MemoryMB = mb
				s.Run(ctx, c)
			})
			if unlimited(got) || got <= 0 || got > int64(sandbox.MaxMemoryMB)<<20 {
				t.Fatalf("container memory limit %d bytes: want a limit, at most %d MB", got, sandbox.MaxMemoryMB)
			}
			// And an ordinary call with it succeeds (2^43 MB used to fail the container's start).
			c := probeCall(`{"op":"echo"}`)
			c.Limits.MemoryMB = mb
			if _, err := s.Run(context.Background(), c); err != nil {
				t.Fatal(err)
			}
		})
	}
}
