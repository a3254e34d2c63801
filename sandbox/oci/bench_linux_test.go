package oci

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// reportMedian adds the median and p99 of per-call durations to a benchmark's report.
func reportMedian(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkColdCall is one single-use container per call: create, start, wait, read output,
// destroy (embedded libcontainer, JSON in and out).
func BenchmarkColdCall(b *testing.B) {
	needContainers(b)
	forUserNS(b, func(b *testing.B, mod func(*Config)) {
		s := newSandbox(b, mod)
		ctx := context.Background()
		var d []time.Duration
		cpu0 := cpuTime()
		for b.Loop() {
			t0 := time.Now()
			out, err := s.Run(ctx, probeCall(`{"op":"echo"}`))
			d = append(d, time.Since(t0))
			if err != nil || out.ExitCode != 0 {
				b.Fatal(err, out.Stderr)
			}
		}
		// CPU of this process and its reaped children (the container inits) per call: steadier
		// than wall time on a loaded machine.
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(len(d)), "cpu-ms/op")
		reportMedian(b, d)
	})
}

// forUserNS runs a benchmark with uid slots (userns, the default) and without (no-userns, as
// containers ran before them), so one run gives the cost of the user namespace.
func forUserNS(b *testing.B, f func(b *testing.B, mod func(*Config))) {
	for _, v := range []struct {
		name string
		off  bool
	}{{"userns", false}, {"no-userns", true}} {
		b.Run(v.name, func(b *testing.B) {
			f(b, func(c *Config) { c.PoolSize = 2; c.noUserNS = v.off })
		})
	}
}

// cpuTime is the user+system time of this process and its reaped children.
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	var t time.Duration
	for _, r := range []syscall.Rusage{self, kids} {
		t += time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	return t
}

// BenchmarkWarmPoolCall takes a pre-created container from the tool's pool: write input, start,
// wait, read output; destroy and refill happen off the call path.
func BenchmarkWarmPoolCall(b *testing.B) {
	needContainers(b)
	forUserNS(b, func(b *testing.B, mod func(*Config)) {
		s := newSandbox(b, mod)
		ctx := context.Background()
		call := probeCall(`{"op":"echo"}`)
		if err := s.Prepare(ctx, call); err != nil {
			b.Fatal(err)
		}
		var d []time.Duration
		for b.Loop() {
			// Measure only calls served from the pool: wait (untimed) for the refill to finish.
			b.StopTimer()
			if err := s.Prepare(ctx, call); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t0 := time.Now()
			out, err := s.Run(ctx, call)
			d = append(d, time.Since(t0))
			if err != nil || out.ExitCode != 0 {
				b.Fatal(err, out.Stderr)
			}
		}
		reportMedian(b, d)
	})
}

// BenchmarkWarmPoolCallShell is BenchmarkWarmPoolCall with a tool that costs next to nothing
// (busybox sh: cat input.json > output.json), so what remains is the sandbox's own per-call work.
func BenchmarkWarmPoolCallShell(b *testing.B) {
	needContainers(b)
	if err := makeBundleArgs(env.toolsDir, "catjson", env.probeBin,
		[]string{"/bin/sh", "-c", "cat /axocoatl/input.json > /axocoatl/output.json"}); err != nil && !os.IsExist(err) {
		b.Fatal(err)
	}
	s := newSandbox(b, func(c *Config) { c.PoolSize = 2 })
	ctx := context.Background()
	call := probeCall(`{"op":"echo"}`)
	call.Tool, call.Dir = "catjson", filepath.Join(env.toolsDir, "catjson")
	var d []time.Duration
	for b.Loop() {
		b.StopTimer()
		if err := s.Prepare(ctx, call); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		out, err := s.Run(ctx, call)
		d = append(d, time.Since(t0))
		if err != nil || out.ExitCode != 0 || string(out.Output) != `{"op":"echo"}` {
			b.Fatal(err, out.Stderr, string(out.Output))
		}
	}
	reportMedian(b, d)
}

// BenchmarkToolExecFloor runs the probe tool with the same JSON I/O as a plain child process in
// a chroot, without any container: the floor a warm-pool call of that tool can approach.
func BenchmarkToolExecFloor(b *testing.B) {
	needContainers(b)
	root := b.TempDir()
	if err := copyFile(env.probeBin, filepath.Join(root, "tool")); err != nil {
		b.Fatal(err)
	}
	io := filepath.Join(root, "axocoatl")
	if err := os.Mkdir(io, 0o755); err != nil {
		b.Fatal(err)
	}
	var d []time.Duration
	for b.Loop() {
		_ = os.Remove(filepath.Join(io, "output.json"))
		t0 := time.Now()
		if err := os.WriteFile(filepath.Join(io, "input.json"), []byte(`{"op":"echo"}`), 0o644); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("/tool")
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatal(err, string(out))
		}
		if _, err := os.ReadFile(filepath.Join(io, "output.json")); err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(t0))
	}
	reportMedian(b, d)
}

// BenchmarkCrunRun is the same bundle via `crun run` (the spec this sandbox would use, written
// once), for the cold-call ratio. Input is written and output read as a call would.
func BenchmarkCrunRun(b *testing.B) {
	needContainers(b)
	crun, err := exec.LookPath("crun")
	if err != nil {
		b.Skip("crun is not installed")
	}
	s := newSandbox(b, func(c *Config) { c.Backend = BackendCrun })
	be := s.be.(*binaryBackend)
	ioDir := filepath.Join(s.ioRoot, "bench-io")
	if err := os.Mkdir(ioDir, 0o700); err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(ioDir)
	_ = crun
	var n atomic.Int64
	var d []time.Duration
	for b.Loop() {
		t0 := time.Now()
		id := "axocoatl-bench-" + strconv.FormatInt(n.Add(1), 10)
		if err := os.WriteFile(filepath.Join(ioDir, "input.json"), []byte(`{"op":"echo"}`), 0o644); err != nil {
			b.Fatal(err)
		}
		sp, err := s.spec(probeCall(""), id, ioDir, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		inst, err := be.create(id, sp, os.Stderr, os.Stderr, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := inst.start(); err != nil {
			b.Fatal(err)
		}
		code, err := inst.wait()
		if err != nil || code != 0 {
			b.Fatal(code, err)
		}
		if _, err := os.ReadFile(filepath.Join(ioDir, "output.json")); err != nil {
			b.Fatal(err)
		}
		_ = inst.destroy()
		d = append(d, time.Since(t0))
	}
	reportMedian(b, d)
}

// BenchmarkWarmPoolPaced serves a call every 30 ms from a pool of 2 without waiting for refills,
// so each call runs while earlier containers are being destroyed and replaced in the background
// (at a lower priority, as root). p50/p99 are of the calls the pool served; cold-% is the share
// of calls it could not serve (they ran cold).
func BenchmarkWarmPoolPaced(b *testing.B) {
	needContainers(b)
	s := newSandbox(b, func(c *Config) { c.PoolSize = 2 })
	ctx := context.Background()
	call := probeCall(`{"op":"echo"}`)
	if err := s.Prepare(ctx, call); err != nil {
		b.Fatal(err)
	}
	var d []time.Duration
	cold := 0
	next := time.Now()
	for b.Loop() {
		b.StopTimer()
		time.Sleep(time.Until(next))
		next = time.Now().Add(30 * time.Millisecond)
		warm := s.PoolStats()[0].Ready > 0
		b.StartTimer()
		t0 := time.Now()
		out, err := s.Run(ctx, call)
		if warm {
			d = append(d, time.Since(t0))
		} else {
			cold++
		}
		if err != nil || out.ExitCode != 0 {
			b.Fatal(err, out.Stderr)
		}
	}
	reportMedian(b, d)
	b.ReportMetric(float64(cold)*100/float64(cold+len(d)), "cold-%")
}
