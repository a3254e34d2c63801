package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
	"github.com/axocoatl/isolation/server/internal/testtools"
)

// greetModule builds testdata/greet for wasip1 once per source version (cached across runs).
var greetModule = sync.OnceValues(func() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return wasmbuild.Cached(ctx, "testdata/greet", filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache"), wasmbuild.Config{})
})

// handModule assembles a module with one memory of minPages and a _start whose body is code.
func handModule(minPages byte, code ...byte) []byte {
	sec := func(id byte, payload ...byte) []byte { return append([]byte{id, byte(len(payload))}, payload...) }
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, sec(1, 1, 0x60, 0, 0)...)                            // type: func() -> ()
	m = append(m, sec(3, 1, 0)...)                                     // function 0: type 0
	m = append(m, sec(5, 1, 0, 0x80|minPages&0x7f, minPages>>7)...)    // memory min
	m = append(m, sec(7, 1, 6, '_', 's', 't', 'a', 'r', 't', 0, 0)...) // export _start
	body := append([]byte{0}, code...)
	body = append(body, 0x0b)
	m = append(m, sec(10, append([]byte{1, byte(len(body))}, body...)...)...)
	return m
}

// wasmExecutor is a real executor with the in-process and Wasm tiers and tools:
// greet (Go guest), bomb (grows memory past its limit), trap (unreachable).
func wasmExecutor(tb testing.TB) *executor.Executor {
	tb.Helper()
	return wasmExecutorWith(tb, executor.Config{})
}

// wasmExecutorWith is wasmExecutor with cfg's other fields (tracing, for example).
func wasmExecutorWith(tb testing.TB, cfg executor.Config) *executor.Executor {
	tb.Helper()
	mod, err := greetModule()
	if err != nil {
		tb.Fatalf("building the Wasm guest: %v", err)
	}
	root := tb.TempDir()
	bin, err := os.ReadFile(mod)
	if err != nil {
		tb.Fatal(err)
	}
	write := func(name, manifest string, module []byte) {
		testtools.WriteTool(tb, root, name, manifest)
		if err := os.WriteFile(filepath.Join(root, name, "tool.wasm"), module, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	write("greet", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm","input_schema":{"type":"object","properties":{"name":{"type":"string"}}}}`, bin)
	// memory.grow(2000 pages = 125 MiB); if it failed (-1): unreachable.
	write("bomb", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm","memory_mb":16}`, handModule(1, 0x41, 0xd0, 0x0f, 0x40, 0x00, 0x41, 0x7f, 0x46, 0x04, 0x40, 0x00, 0x0b))
	write("trap", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm"}`, handModule(1, 0x00))
	ws, err := wasm.New(wasm.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	// Compile ahead: the first compile of a Go module takes seconds (many under -race), which
	// would eat the first call's timeout.
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := ws.Prepare(pctx, sandbox.Call{ID: "prepare", Tool: "greet", Runtime: isolation.RequireWasm, Dir: filepath.Join(root, "greet"),
		Entrypoint: filepath.Join(root, "greet", "tool.wasm"), Input: []byte("{}"), Limits: sandbox.Limits{}.WithDefaults()}); err != nil {
		tb.Fatalf("compiling greet: %v", err)
	}
	cat, err := catalog.Open(root)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Catalog, cfg.Sandboxes, cfg.MaxTimeout = cat, []sandbox.Sandbox{native.NewWithBuiltins(), ws}, 30*time.Second
	exec, err := executor.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { exec.Close() })
	return exec
}

func TestWasmTier(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go guest for wasip1")
	}
	s, err := New(Config{Executor: wasmExecutor(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	cases := []struct {
		tool, body string
		status     int
		contains   string
	}{
		{"greet", `{"name":"Ada"}`, 200, `{"greeting":"Hello, Ada!"}`},
		{"greet", `{"name":7}`, 400, `"invalid_input"`},
		{"bomb", `{}`, 507, `"memory_limit"`},
		{"trap", `{}`, 502, `"tool_failed"`},
		{"greet", `{"name":"again"}`, 200, `Hello, again!`},
	}
	for _, c := range cases {
		resp, body := do(t, "POST", ts.URL+"/v1/tools/"+c.tool+"/execute", c.body, nil)
		if resp.StatusCode != c.status || !bytes.Contains(body, []byte(c.contains)) {
			t.Errorf("%s %s: %d %s; want %d with %s", c.tool, c.body, resp.StatusCode, body, c.status, c.contains)
		}
		if c.status == 200 && resp.Header.Get("X-Axocoatl-Tier") != "Wasmtime" {
			t.Errorf("tier header %q", resp.Header.Get("X-Axocoatl-Tier"))
		}
	}
	_, body := do(t, "GET", ts.URL+"/metrics", "", nil)
	for _, want := range []string{
		`axoiso_calls_total{outcome="ok",tier="Wasmtime",tool="greet"} 2`,
		`axoiso_calls_total{outcome="memory_limit",tier="Wasmtime",tool="bomb"} 1`,
		`axoiso_tier_available{backend="wazero",tier="Wasmtime"} 1`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s:\n%s", want, grep(body, "axoiso_calls_total"))
		}
	}
}

func quantile(lat []time.Duration, p float64) time.Duration {
	slices.Sort(lat)
	return lat[int(p*float64(len(lat)-1))]
}

// BenchmarkHTTPOverhead compares one Wasm call made directly on the executor with the same call
// through the HTTP API (keep-alive client on loopback), one at a time. overhead_p50_ms is the
// difference of the medians.
//
//	go test -run '^$' -bench HTTPOverhead -benchtime 2000x ./server/
func BenchmarkHTTPOverhead(b *testing.B) {
	exec := wasmExecutor(b)
	s, err := New(Config{Executor: exec})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	input := []byte(`{"name":"bench"}`)
	ctx := context.Background()
	client := ts.Client()
	for range 20 { // compile and warm both paths
		if _, err := exec.Execute(ctx, "greet", input); err != nil {
			b.Fatal(err)
		}
	}
	direct := make([]time.Duration, 0, b.N)
	viaHTTP := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Interleaved, so both paths see the same machine state.
		t0 := time.Now()
		if _, err := exec.Execute(ctx, "greet", input); err != nil {
			b.Fatal(err)
		}
		direct = append(direct, time.Since(t0))
		t0 = time.Now()
		resp, err := client.Post(ts.URL+"/v1/tools/greet/execute", "application/json", bytes.NewReader(input))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		viaHTTP = append(viaHTTP, time.Since(t0))
	}
	b.StopTimer()
	d50, h50 := quantile(direct, .5), quantile(viaHTTP, .5)
	b.ReportMetric(float64(d50.Microseconds())/1000, "direct_p50_ms")
	b.ReportMetric(float64(h50.Microseconds())/1000, "http_p50_ms")
	b.ReportMetric(float64((h50-d50).Microseconds())/1000, "overhead_p50_ms")
	b.ReportMetric(float64(quantile(viaHTTP, .99).Microseconds())/1000, "http_p99_ms")
}

// BenchmarkHTTPLoad drives the Wasm tool with 32 concurrent clients for a fixed wall time per
// window, alternating windows through the HTTP API (keep-alive clients on loopback) and direct
// executor calls, and reports each one's calls/s (median of the windows), the ratio, and HTTP
// latency quantiles. On a shared machine the ratio is the steadier figure.
//
//	go test -run '^$' -bench HTTPLoad -benchtime 3x ./server/
func BenchmarkHTTPLoad(b *testing.B) {
	const clients = 32
	const window = 3 * time.Second
	exec := wasmExecutor(b)
	s, err := New(Config{Executor: exec})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	input := []byte(`{"name":"load"}`)
	ctx := context.Background()
	if _, err := exec.Execute(ctx, "greet", input); err != nil {
		b.Fatal(err)
	}
	viaHTTP := func() error {
		resp, err := client.Post(ts.URL+"/v1/tools/greet/execute", "application/json", bytes.NewReader(input))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	direct := func() error {
		_, err := exec.Execute(ctx, "greet", input)
		return err
	}
	run := func(call func() error) (float64, []time.Duration) {
		var ok, failed atomic.Int64
		var mu sync.Mutex
		var all []time.Duration
		var wg sync.WaitGroup
		stop := time.Now().Add(window)
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lat []time.Duration
				for time.Now().Before(stop) {
					t0 := time.Now()
					if err := call(); err != nil {
						failed.Add(1)
						continue
					}
					lat = append(lat, time.Since(t0))
					ok.Add(1)
				}
				mu.Lock()
				all = append(all, lat...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		if failed.Load() > 0 {
			b.Fatalf("%d calls failed", failed.Load())
		}
		return float64(ok.Load()) / time.Since(start).Seconds(), all
	}
	var httpRates, directRates []float64
	var httpLat []time.Duration
	for i := 0; i < b.N; i++ {
		r, _ := run(direct)
		directRates = append(directRates, r)
		r, lat := run(viaHTTP)
		httpRates = append(httpRates, r)
		httpLat = append(httpLat, lat...)
	}
	med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	h, d := med(slices.Clone(httpRates)), med(slices.Clone(directRates))
	b.ReportMetric(h, "http_calls/s")
	b.ReportMetric(d, "direct_calls/s")
	b.ReportMetric(h/d, "http/direct")
	b.ReportMetric(float64(quantile(httpLat, .5).Microseconds())/1000, "http_p50_ms")
	b.ReportMetric(float64(quantile(httpLat, .99).Microseconds())/1000, "http_p99_ms")
	b.Logf("%d clients, %d windows of %s each: http calls/s %s; direct %s", clients, b.N, window,
		strings.Trim(fmt.Sprint(httpRates), "[]"), strings.Trim(fmt.Sprint(directRates), "[]"))
}
