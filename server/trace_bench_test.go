package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/tracing"
	"github.com/axocoatl/isolation/internal/tracing/otlp"
	"github.com/axocoatl/isolation/internal/tracing/otlptest"
)

// BenchmarkTracing is a warm call on the executor, one at a time, of the Wasm tool greet and of
// the in-process built-in echo (where the executor's own cost shows), on three executors whose
// calls are interleaved so that all see the same machine: tracing off (no tracer provider: the
// default), on with every call sampled and exported (OTLP/HTTP batches to an in-process
// receiver), and on with the call not sampled (a caller's traceparent with the sampled flag off).
// Each reports its median call (µs).
//
//	go test -run '^$' -bench 'Tracing$' -benchtime 3000x ./server/
func BenchmarkTracing(b *testing.B) {
	rcv := otlptest.NewHTTP(b)
	tp, err := otlp.NewProvider(context.Background(), otlp.Config{Endpoint: rcv.URL})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	benchInterleaved(b, []benchVariant{
		{"off", wasmExecutorWith(b, executor.Config{}), context.Background()},
		{"sampled", wasmExecutorWith(b, executor.Config{TracerProvider: tp}), context.Background()},
		{"unsampled", wasmExecutorWith(b, executor.Config{TracerProvider: tp}),
			tracing.Extract(context.Background(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "")},
	})
}

// BenchmarkTracingOff is BenchmarkTracing's loop with tracing off in all three executors: the
// same file, run on a tree without tracing, measures what the change costs when tracing is off.
//
//	go test -run '^$' -bench 'TracingOff$' -benchtime 3000x ./server/
func BenchmarkTracingOff(b *testing.B) {
	benchInterleaved(b, []benchVariant{
		{"a", wasmExecutorWith(b, executor.Config{}), context.Background()},
		{"b", wasmExecutorWith(b, executor.Config{}), context.Background()},
		{"c", wasmExecutorWith(b, executor.Config{}), context.Background()},
	})
}

type benchVariant struct {
	name string
	exec *executor.Executor
	ctx  context.Context
}

// benchInterleaved calls greet and echo b.N times on each variant in turn (after 20 warm-up
// calls each) and reports each variant's median.
func benchInterleaved(b *testing.B, variants []benchVariant) {
	for _, tool := range []struct{ name, input string }{{"greet", `{"name":"bench"}`}, {"echo", `{"k":1}`}} {
		b.Run(tool.name, func(b *testing.B) {
			input := []byte(tool.input)
			lat := make([][]time.Duration, len(variants))
			for i, v := range variants {
				for range 20 {
					if _, err := v.exec.Execute(v.ctx, tool.name, input); err != nil {
						b.Fatal(err)
					}
				}
				lat[i] = make([]time.Duration, 0, b.N)
			}
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				for i, v := range variants {
					t0 := time.Now()
					if _, err := v.exec.Execute(v.ctx, tool.name, input); err != nil {
						b.Fatal(err)
					}
					lat[i] = append(lat[i], time.Since(t0))
				}
			}
			b.StopTimer()
			for i, v := range variants {
				b.ReportMetric(float64(quantile(lat[i], .5).Nanoseconds())/1000, fmt.Sprintf("%s_p50_µs", v.name))
			}
		})
	}
}
