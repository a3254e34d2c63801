package microvm_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// go test -run '^$' -bench . -benchtime 5x ./sandbox/microvm/
//
// The tool is a one-line shell script, so the figures are the VM's cost.
const shTrivial = "echo '{\"ok\":true}' > /axocoatl/output.json\n"

func benchCalls(b *testing.B, opts microvm.Options, beforeEach func(*microvm.Sandbox)) {
	s := newSandbox(b, opts)
	dir, entry := tool(b, "main.sh", shTrivial, 0o644)
	c := call("bench", isolation.RequireShell, dir, entry, `{}`, 20*time.Second)
	if _, err := s.Run(context.Background(), c); err != nil { // warm caches, take the snapshot
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if beforeEach != nil {
			b.StopTimer()
			beforeEach(s)
			b.StartTimer()
		}
		o, err := s.Run(context.Background(), c)
		if err != nil || !bytes.Contains(o.Output, []byte("ok")) {
			b.Fatalf("Run: %v %q", err, o.Output)
		}
	}
	b.StopTimer()
	b.Logf("stats %+v", s.Stats())
}

func BenchmarkColdCall(b *testing.B) { benchCalls(b, microvm.Options{}, nil) }

func BenchmarkRestoreCall(b *testing.B) { benchCalls(b, microvm.Options{Snapshots: true}, nil) }

func BenchmarkPooledCall(b *testing.B) {
	var rss []int64
	benchCalls(b, microvm.Options{PoolSize: 1, Snapshots: true}, func(s *microvm.Sandbox) {
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
