package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
)

func init() {
	register(command{name: "bench", summary: "run a tool N times and report latency percentiles, calls/s and peak RSS", run: runBench})
}

// benchReport is the --json output of axoiso bench.
type benchReport struct {
	Tool     string `json:"tool"`
	Tier     string `json:"tier"`
	Backend  string `json:"backend,omitempty"`
	Degraded bool   `json:"degraded"`
	N        int    `json:"n"`
	C        int    `json:"concurrency"`
	Errors   int    `json:"errors"`
	// Prepared is true when the tool was prepared (module compiled, warm pool filled) first.
	Prepared   bool    `json:"prepared"`
	IntervalMS float64 `json:"interval_ms,omitempty"`
	// CrunP50MS and RatioVsCrun (p50 / crun's p50) are set by --vs-crun.
	CrunP50MS   float64 `json:"crun_p50_ms,omitempty"`
	RatioVsCrun float64 `json:"ratio_vs_crun,omitempty"`
	FirstMS     float64 `json:"first_call_ms"`
	P50MS       float64 `json:"p50_ms"`
	P90MS       float64 `json:"p90_ms"`
	P99MS       float64 `json:"p99_ms"`
	MaxMS       float64 `json:"max_ms"`
	CallsPerS   float64 `json:"calls_per_s"`
	// PeakRSSMB is this process's peak resident set; PeakChildRSSMB the largest child's (a
	// container init or a VMM).
	PeakRSSMB      float64 `json:"peak_rss_mb"`
	PeakChildRSSMB float64 `json:"peak_child_rss_mb"`
	// IdlePoolRSSMB is the mean resident set of an idle pooled item (a pooled VM's VMM), read
	// once the pool has refilled after the calls; 0 when the tier reports none.
	IdlePoolRSSMB float64 `json:"idle_pool_rss_mb,omitempty"`
}

func runBench(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	var cf callFlags
	cf.add(fs)
	n := fs.Int("n", 200, "number of calls")
	c := fs.Int("c", 1, "concurrent calls")
	asJSON := fs.Bool("json", false, "print JSON")
	interval := fs.Duration("interval", 0, "pause between one worker's calls (lets warm pools refill: measures warm calls, not refill throughput)")
	vsCrun := fs.Bool("vs-crun", false, "for an Oci tool: also run the same calls through an installed crun (cold, same bundle and I/O) and report the ratio")
	cold := fs.Bool("cold", false, "do not prepare the tool first (no warm pool: every call starts its sandbox from scratch)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one tool name, got %d arguments", len(pos))
	}
	if *n < 1 || *c < 1 {
		return usagef("-n and -c must be at least 1")
	}
	opts, err := cf.options()
	if err != nil {
		return err
	}
	input, err := cf.readInput(stdin, false, "{}")
	if err != nil {
		return err
	}
	cfg, _, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	e, err := axoiso.New(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	if !*cold {
		if err := e.Prepare(ctx, pos[0], opts...); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
	}
	rep, err := bench(ctx, e, pos[0], input, *n, *c, *interval, opts)
	rep.Prepared = !*cold
	if err == nil && !*cold {
		rep.IdlePoolRSSMB = idlePoolRSS(ctx, e, rep.Tier)
	}
	if *vsCrun {
		if rep.Tier != isolation.TierOCI.String() {
			return usagef("--vs-crun compares Oci calls; %q ran in %s", pos[0], rep.Tier)
		}
		// The same bundle, limits and JSON I/O, through crun instead of the embedded runtime.
		cfg.Oci.Backend, cfg.Oci.PoolSize = "crun", -1
		ce, err := axoiso.New(cfg)
		if err != nil {
			return err
		}
		crun, err := bench(ctx, ce, pos[0], input, *n, *c, *interval, append(opts, executor.WithTier(isolation.TierOCI)))
		ce.Close()
		if err != nil {
			return fmt.Errorf("crun baseline: %w", err)
		}
		rep.CrunP50MS, rep.RatioVsCrun = crun.P50MS, rep.P50MS/crun.P50MS
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "%s in %s (backend %s, degraded=%v, prepared=%v): %d calls, concurrency %d, %d errors\n", rep.Tool, rep.Tier, dash(rep.Backend), rep.Degraded, rep.Prepared, rep.N, rep.C, rep.Errors)
	fmt.Fprintf(stdout, "first call %.2f ms; p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms\n", rep.FirstMS, rep.P50MS, rep.P90MS, rep.P99MS, rep.MaxMS)
	fmt.Fprintf(stdout, "%.0f calls/s; peak RSS %.1f MB (largest child %.1f MB)\n", rep.CallsPerS, rep.PeakRSSMB, rep.PeakChildRSSMB)
	if rep.IdlePoolRSSMB > 0 {
		fmt.Fprintf(stdout, "idle pooled item RSS %.1f MB\n", rep.IdlePoolRSSMB)
	}
	if rep.CrunP50MS > 0 {
		fmt.Fprintf(stdout, "crun (same bundle, cold) p50 %.3f ms; ratio %.2f\n", rep.CrunP50MS, rep.RatioVsCrun)
	}
	return nil
}

// bench makes one warm-up call (compile, pool fill), then n calls from c goroutines.
func bench(ctx context.Context, e *executor.Executor, tool string, input []byte, n, c int, interval time.Duration, opts []executor.Option) (benchReport, error) {
	rep := benchReport{Tool: tool, N: n, C: c, IntervalMS: ms(interval)}
	t0 := time.Now()
	first, err := e.Execute(ctx, tool, input, opts...)
	if err != nil {
		return rep, fmt.Errorf("warm-up call: %w", err)
	}
	rep.FirstMS = ms(time.Since(t0))
	rep.Tier, rep.Backend, rep.Degraded = first.Tier.String(), first.Backend, first.Degraded

	lat := make([]time.Duration, n)
	var (
		mu      sync.Mutex // protects errs and lastErr
		errs    int
		lastErr error
		wg      sync.WaitGroup
		next    = make(chan int)
	)
	start := time.Now()
	if interval > 0 {
		time.Sleep(interval) // let the warm-up call's pool refill
	}
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if interval > 0 {
					time.Sleep(interval)
				}
				t := time.Now()
				_, err := e.Execute(ctx, tool, input, opts...)
				lat[i] = time.Since(t)
				if err != nil {
					mu.Lock()
					errs++
					lastErr = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if errs == n {
		return rep, fmt.Errorf("every call failed, the last with: %w", lastErr)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return ms(lat[min(len(lat)-1, int(p*float64(len(lat))))]) }
	rep.Errors = errs
	rep.P50MS, rep.P90MS, rep.P99MS, rep.MaxMS = pct(0.50), pct(0.90), pct(0.99), ms(lat[len(lat)-1])
	// With --interval, calls/s counts busy time only.
	rep.CallsPerS = float64(n) / (elapsed - time.Duration(n/c)*interval).Seconds()
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		rep.PeakRSSMB = float64(ru.Maxrss) / 1024
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru) == nil {
		rep.PeakChildRSSMB = float64(ru.Maxrss) / 1024
	}
	return rep, nil
}

// idlePoolRSS waits (up to 30 s) for the pools of the tier that ran the calls to refill and
// settle, then returns the mean idle RSS of their items in MB (0 when the tier reports none).
func idlePoolRSS(ctx context.Context, e *executor.Executor, tierName string) float64 {
	t, err := isolation.ParseTier(tierName)
	if err != nil {
		return 0
	}
	sb, ok := e.Sandbox(t)
	if !ok {
		return 0
	}
	p, ok := sb.(sandbox.Pooler)
	if !ok {
		return 0
	}
	full := func() bool {
		for _, st := range p.PoolStats() {
			if st.Ready < st.Size {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(30 * time.Second); !full() && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a refilled VM is still finishing its rehearsal call
	var sum int64
	var n int
	for _, st := range p.PoolStats() {
		if st.IdleRSSBytes > 0 {
			sum += st.IdleRSSBytes
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(sum) / float64(n) / (1 << 20)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
