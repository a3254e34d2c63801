package wasm

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation/sandbox"
)

// benchCall runs the guest's greeting: read input.json, decode, encode, write output.json.
func benchCall(b *testing.B) sandbox.Call {
	return call(guest(b), map[string]any{"name": "bench"}, sandbox.Limits{})
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50_ms")
	b.ReportMetric(q(0.90), "p90_ms")
	b.ReportMetric(q(0.99), "p99_ms")
}

// benchReactorCall is the same greeting by the reactor build (snapshot mode).
func benchReactorCall(b *testing.B) sandbox.Call {
	return call(reactor(b), map[string]any{"name": "bench"}, sandbox.Limits{})
}

// BenchmarkCall is one call at a time, per configuration: the optimised default (command
// module), the reactor in snapshot mode, and each optimisation switched off, to measure what it
// is worth.
func BenchmarkCall(b *testing.B) {
	for _, bc := range []struct {
		name    string
		cfg     Config
		reactor bool
	}{
		{"optimised", Config{}, false},
		{"snapshot", Config{}, true},
		{"reactor-no-snapshot", Config{noSnapshots: true}, true},
		{"heap-memory", Config{heapMemory: true}, false},
		{"unmerged-segments", Config{keepDataSegments: true}, false},
		{"wazero-defaults", Config{heapMemory: true, keepDataSegments: true, engineDeadlineChecks: true}, false},
		{"engine-deadline-checks", Config{engineDeadlineChecks: true}, false},
		{"no-deadline-checks-unsafe", Config{noDeadlineChecks: true}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := newSandbox(b, bc.cfg)
			c := benchCall(b)
			if bc.reactor {
				c = benchReactorCall(b)
			}
			ctx := context.Background()
			if err := s.Prepare(ctx, c); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t := time.Now()
				out, err := s.Run(ctx, c)
				lat = append(lat, time.Since(t))
				if err != nil || out.ExitCode != 0 || out.Output == nil {
					b.Fatalf("call: %v %+v", err, out)
				}
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// BenchmarkCallParallel runs calls from GOMAXPROCS callers (callers=1×) and from 4×GOMAXPROCS
// (queueing): calls/s and latency, for the command and the snapshot-mode reactor.
func BenchmarkCallParallel(b *testing.B) {
	for _, mode := range []string{"command", "snapshot"} {
		for _, per := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/callers=%dx", mode, per), func(b *testing.B) {
				benchParallel(b, runtime.GOMAXPROCS(0), per, mode == "snapshot")
			})
		}
	}
}

func benchParallel(b *testing.B, slots, callersPerProc int, snapshot bool) {
	s := newSandbox(b, Config{MaxConcurrency: slots})
	c := benchCall(b)
	if snapshot {
		c = benchReactorCall(b)
	}
	ctx := context.Background()
	if err := s.Prepare(ctx, c); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(callersPerProc)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			t := time.Now()
			if _, err := s.Run(ctx, c); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
	reportLatency(b, lat)
}

// BenchmarkColdStartWarmCache is a new process's first call with a warm disk cache: a new
// Sandbox (new wazero runtime) on a filled cache directory, then one call.
func BenchmarkColdStartWarmCache(b *testing.B) {
	dir := b.TempDir()
	c := benchCall(b)
	ctx := context.Background()
	warm := newSandbox(b, Config{CacheDir: dir})
	if err := warm.Prepare(ctx, c); err != nil {
		b.Fatal(err)
	}
	warm.Close()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t := time.Now()
		s, err := New(Config{CacheDir: dir})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Run(ctx, c); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
	reportLatency(b, lat)
}

// BenchmarkInstanceRSS holds 16 instances live at once (each spinning until its deadline, after
// the Go runtime and the tool have initialised) and reports the RSS growth per live instance.
func BenchmarkInstanceRSS(b *testing.B) {
	b.Run("command", func(b *testing.B) { benchRSS(b, guest(b)) })
	b.Run("snapshot", func(b *testing.B) { benchRSS(b, reactor(b)) })
}

func benchRSS(b *testing.B, module string) {
	const n = 16
	s := newSandbox(b, Config{MaxConcurrency: n})
	ctx := context.Background()
	c := call(module, map[string]any{"mode": "spin"}, sandbox.Limits{Timeout: 1500 * time.Millisecond})
	if err := s.Prepare(ctx, c); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		runtime.GC()
		before := rss(b)
		var wg sync.WaitGroup
		for j := 0; j < n; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.Run(ctx, c)
			}()
		}
		time.Sleep(time.Second) // every instance has started and is spinning
		during := rss(b)
		wg.Wait()
		b.ReportMetric(float64(during-before)/n/(1<<20), "MiB_RSS/instance")
	}
}

func rss(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status:", err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	b.Skip("no VmRSS")
	return 0
}

// BenchmarkModuleCacheRSS compiles distinct variants of the guest (the same code with a
// different custom section, as successive edits of a tool are) into a cache bounded to 2
// modules. It reports what one compiled module keeps (Go heap and machine code: what
// moduleCostFactor estimates) and RSS after 3× the cap, which stays near the cap's worth instead
// of growing with every edit.
func BenchmarkModuleCacheRSS(b *testing.B) {
	bin, err := os.ReadFile(guest(b))
	if err != nil {
		b.Fatal(err)
	}
	const max, n = 2, 6
	dir := b.TempDir()
	gc := func() {
		// Evicted code is unmapped by a finalizer: two cycles run it.
		runtime.GC()
		runtime.GC()
	}
	for i := 0; i < b.N; i++ {
		s := newSandbox(b, Config{MaxModules: max, CacheDir: b.TempDir()})
		gc()
		base, baseHeap, baseCode := rss(b), heapInUse(), codeRSS(b)
		var atCap, heap, code int64
		for j := 0; j < n; j++ {
			p := fmt.Sprintf("%s/v%d-%d.wasm", dir, i, j)
			v := append(append([]byte(nil), bin...), 0, 4, 2, 'v', byte('a'+j), 0) // a custom section
			if err := os.WriteFile(p, v, 0o644); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Run(context.Background(), call(p, map[string]any{"name": "x"}, sandbox.Limits{})); err != nil {
				b.Fatal(err)
			}
			if j == max-1 {
				gc()
				atCap, heap, code = rss(b), heapInUse()-baseHeap, codeRSS(b)-baseCode
			}
		}
		gc()
		end := rss(b)
		b.ReportMetric(float64(atCap-base)/max/(1<<20), "MiB_RSS/module")
		b.ReportMetric(float64(heap)/max/(1<<20), "MiB_heap/module")
		b.ReportMetric(float64(code)/max/(1<<20), "MiB_code/module")
		b.ReportMetric(float64(end-base)/(1<<20), "MiB_RSS_after_3x_cap")
		b.ReportMetric(float64(s.moduleBytes)/max/(1<<20), "MiB_charged/module")
		b.ReportMetric(float64(len(bin))/(1<<20), "MiB_wasm")
		s.Close()
	}
}

func heapInUse() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// codeRSS is the resident size of the process's anonymous executable mappings: wazero's
// compiled code.
func codeRSS(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		b.Skip("no /proc/self/smaps:", err)
	}
	var total int64
	var inCode bool
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-"):
			inCode = len(f) == 5 && strings.Contains(f[1], "x")
		case inCode && len(f) >= 2 && f[0] == "Rss:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			total += kb << 10
		}
	}
	return total
}

// BenchmarkHTTPRequest: a call of the http guest that makes one GET through http_request
// (policy check, the gate's resolver — cached after the first —, connect, request, response,
// all through a fresh client per call) against the same call making none, alternating so both
// see the same load; p50 of each and the difference, what one request costs a tool.
func BenchmarkHTTPRequest(b *testing.B) {
	w := newHTTPWorld(b)
	s := newSandbox(b, w.cfg)
	hello := map[string]any{"url": fmt.Sprintf("http://api.allowed.test:%d/hello", w.port)}
	none := map[string]any{"requests": []any{}}
	one := map[string]any{"requests": []any{hello}}
	w.run(b, s, w.policy, one) // compiles the guest and warms the resolver's cache
	var without, with []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		w.run(b, s, w.policy, none)
		without = append(without, time.Since(t0))
		t0 = time.Now()
		if r := w.run(b, s, w.policy, one); len(r) != 1 || r[0].Status != 200 {
			b.Fatalf("request: %+v", r)
		}
		with = append(with, time.Since(t0))
	}
	b.StopTimer()
	p50 := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	a, c := p50(without), p50(with)
	b.ReportMetric(float64(a.Microseconds())/1000, "no-request-p50-ms")
	b.ReportMetric(float64(c.Microseconds())/1000, "one-request-p50-ms")
	b.ReportMetric(float64((c-a).Microseconds())/1000, "request-ms")
}
