package microvm_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// go test -run '^$' -bench . -benchtime 5x ./sandbox/microvm/
//
// The Shell tool is a one-line script, so its figures are the VM's cost; the Python tool is the
// smallest real Python tool (json in, json out), so its figures include the interpreter's start.
// Besides ns/op (a mean), each benchmark reports the median call ("p50-ms") and the median tool
// run time the guest measured ("tool-p50-ms"); overhead is the difference.
const shTrivial = "echo '{\"ok\":true}' > /axocoatl/output.json\n"

const pyTrivial = `import json
with open("/axocoatl/input.json") as f:
    n = json.load(f)
with open("/axocoatl/output.json", "w") as f:
    json.dump({"ok": True, "n": n}, f)
`

type benchTool struct {
	name, file, content string
	req                 isolation.RuntimeRequirement
}

var (
	benchShell  = benchTool{"shell", "main.sh", shTrivial, isolation.RequireShell}
	benchPython = benchTool{"python", "main.py", pyTrivial, isolation.RequirePython}
)

func benchCalls(b *testing.B, bt benchTool, opts microvm.Config, beforeEach func(*microvm.Sandbox)) {
	s := newSandbox(b, opts)
	dir, entry := tool(b, bt.file, bt.content, 0o644)
	benchRun(b, s, call("bench", bt.req, dir, entry, `{}`, 20*time.Second), beforeEach)
}

// benchRun measures b.N calls of c in s (closed at the end) after one unmeasured call.
func benchRun(b *testing.B, s *microvm.Sandbox, c sandbox.Call, beforeEach func(*microvm.Sandbox)) {
	if _, err := s.Run(context.Background(), c); err != nil { // warm caches, take the snapshot
		b.Fatal(err)
	}
	var calls, tools, runs, exch, guestT, recv []time.Duration
	cpu0 := childCPU()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if beforeEach != nil {
			b.StopTimer()
			beforeEach(s)
			b.StartTimer()
		}
		before := s.Stats()
		start := time.Now()
		o, err := s.Run(context.Background(), c)
		calls = append(calls, time.Since(start))
		after := s.Stats()
		tools = append(tools, time.Duration(after.ToolMS-before.ToolMS)*time.Millisecond)
		runs = append(runs, time.Duration(after.RunUS-before.RunUS)*time.Microsecond)
		exch = append(exch, time.Duration(after.ExchangeUS-before.ExchangeUS)*time.Microsecond)
		guestT = append(guestT, time.Duration(after.GuestUS-before.GuestUS)*time.Microsecond)
		recv = append(recv, time.Duration(after.RecvUS-before.RecvUS)*time.Microsecond)
		if err != nil || !bytes.Contains(o.Output, []byte("ok")) {
			b.Fatalf("Run: %v %q (stderr %q)", err, o.Output, o.Stderr)
		}
	}
	b.StopTimer()
	if err := s.Close(); err != nil { // reap every VMM, so that its CPU time is counted
		b.Fatal(err)
	}
	b.ReportMetric(float64((childCPU()-cpu0).Microseconds())/1000/float64(b.N), "vmm-cpu-ms/op")
	b.ReportMetric(float64(median(calls).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(median(tools).Microseconds())/1000, "tool-p50-ms")
	// Where the overhead goes, per call (medians of differences): outside the exchange (taking
	// or starting the VM, reading the tool folder), in the channel (request latency + response
	// transfer), in the agent besides the tool.
	over := make([]time.Duration, len(calls))
	outside := make([]time.Duration, len(calls))
	channel := make([]time.Duration, len(calls))
	agent := make([]time.Duration, len(calls))
	for i := range calls {
		over[i] = calls[i] - tools[i]
		outside[i] = runs[i] - exch[i]
		channel[i] = exch[i] - guestT[i]
		agent[i] = guestT[i] - tools[i]
	}
	b.ReportMetric(float64(median(over).Microseconds())/1000, "overhead-p50-ms")
	b.ReportMetric(float64(median(outside).Microseconds())/1000, "host-ms")
	b.ReportMetric(float64(median(channel).Microseconds())/1000, "chan-ms")
	b.ReportMetric(float64(median(recv).Microseconds())/1000, "recv-ms")
	b.ReportMetric(float64(median(agent).Microseconds())/1000, "agent-ms")
	b.Logf("stats %+v", s.Stats())
}

// childCPU is the user+system CPU time of this process's waited-for children (the VMMs): unlike
// wall time, it hardly depends on what else the machine runs.
func childCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}

func BenchmarkColdCall(b *testing.B) {
	for _, bt := range []benchTool{benchShell, benchPython} {
		b.Run(bt.name, func(b *testing.B) { benchCalls(b, bt, microvm.Config{}, nil) })
	}
	// The guest kernel's CPU side-channel mitigations back on (BaseCmdline turns them off; a
	// later mitigations= wins): what they cost a cold call. -count interleaves the two.
	b.Run("shell-mitigations-on", func(b *testing.B) {
		benchCalls(b, benchShell, microvm.Config{ExtraCmdline: "mitigations=auto"}, nil)
	})
	// The whole root unpacked from the initramfs (what an image without a root drive boots).
	b.Run("shell-initramfs-root", func(b *testing.B) {
		benchCalls(b, benchShell, microvm.WithRootInInitramfs(microvm.Config{}), nil)
	})
}

// BenchmarkImageCall: a ContainerImage tool (a static busybox bundle writing its output) in the
// microVM tier: cold (boot with the image drive, tool init, the bundle's process; the drive built
// once before), and from a pool of VMs keyed by the drive's digest.
//
//	go test -run '^$' -bench ImageCall -benchtime 10x ./sandbox/microvm/
func BenchmarkImageCall(b *testing.B) {
	for _, mode := range []string{"cold", "pooled"} {
		b.Run(mode, func(b *testing.B) {
			opts := microvm.Config{DriveDir: filepath.Join(b.TempDir(), "drives")}
			if mode == "pooled" {
				opts.PoolSize, opts.Snapshots = 1, true
			}
			s := newSandbox(b, opts)
			dir := busyboxBundle(b, shTrivial, 0, 0, []string{"PATH=/bin"}, "/", nil)
			c := imageCall("bench", dir, `{}`)
			var before func(*microvm.Sandbox)
			if mode == "pooled" {
				if err := s.Prepare(context.Background(), c); err != nil {
					b.Fatal(err)
				}
				before = func(s *microvm.Sandbox) {
					waitPool(b, s, 1)
					time.Sleep(300 * time.Millisecond) // let the clone settle to idle
				}
			}
			benchRun(b, s, c, before)
		})
	}
}

func BenchmarkRestoreCall(b *testing.B) {
	for _, bt := range []benchTool{benchShell, benchPython} {
		b.Run(bt.name, func(b *testing.B) { benchCalls(b, bt, microvm.Config{Snapshots: true}, nil) })
	}
}

func BenchmarkPooledCall(b *testing.B) {
	for _, bt := range []benchTool{benchShell, benchPython} {
		b.Run(bt.name, func(b *testing.B) { benchPooled(b, bt, false) })
	}
	b.Run("python-warmpool", func(b *testing.B) { benchPooled(b, benchPython, true) })
}

func benchPooled(b *testing.B, bt benchTool, warm bool) {
	var rss []int64
	benchCalls(b, bt, microvm.Config{PoolSize: 1, Snapshots: true, WarmPool: warm}, func(s *microvm.Sandbox) {
		waitPool(b, s, 1)
		time.Sleep(300 * time.Millisecond) // let the clone settle to idle
		rss = append(rss, vmmRSS()...)
	})
	if len(rss) > 0 {
		var sum int64
		for _, r := range rss {
			sum += r
		}
		b.ReportMetric(float64(sum)/float64(len(rss))/(1<<20), "idle-VM-RSS-MiB")
	}
}

// vmmRSS returns the RSS in bytes of each QEMU process of this test run.
func vmmRSS() []int64 {
	var out []int64
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("qemu-system")) || !bytes.Contains(b, []byte(runRoot)) {
			continue
		}
		st, err := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				out = append(out, kb<<10)
			}
		}
	}
	return out
}
