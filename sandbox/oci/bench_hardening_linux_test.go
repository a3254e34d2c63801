package oci

import (
	"context"
	"testing"
	"time"
)

// BenchmarkColdCallHardening is a single-use container call with and without the hardening that
// costs a cold call something: the default-deny seccomp allowlist (compiled by libseccomp in
// every container's init) and the user namespace of a uid slot. What each costs, in one run.
func BenchmarkColdCallHardening(b *testing.B) {
	needContainers(b)
	for _, v := range []struct {
		name string
		mod  func(*Config)
	}{
		{"default", func(c *Config) {}},
		{"noseccomp", func(c *Config) { c.NoSeccomp = true }},
		{"nouserns", func(c *Config) { c.noUserNS = true }},
		{"neither", func(c *Config) { c.NoSeccomp = true; c.noUserNS = true }},
	} {
		b.Run(v.name, func(b *testing.B) {
			s := newSandbox(b, func(c *Config) { c.PoolSize = -1; v.mod(c) })
			var d []time.Duration
			cpu0 := cpuTime()
			for b.Loop() {
				t0 := time.Now()
				out, err := s.Run(context.Background(), probeCall(`{"op":"echo"}`))
				d = append(d, time.Since(t0))
				if err != nil || out.ExitCode != 0 {
					b.Fatal(err, out.Stderr)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(len(d)), "cpu-ms/op")
			reportMedian(b, d)
		})
	}
}
