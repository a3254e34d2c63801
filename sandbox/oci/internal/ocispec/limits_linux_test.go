package ocispec

import (
	"math"
	"testing"
)

// Memory and CPU values that overflow their conversion to bytes and quota microseconds get the
// bound instead: a container must never end up with a limit of 0 ("no limit") or a negative one.
func TestResourcesNeverOverflow(t *testing.T) {
	for _, tt := range []struct {
		name      string
		memoryMB  int
		cpus      float64
		wantMem   int64
		wantQuota int64
	}{
		{"ordinary", 1024, 1, 1024 << 20, cpuPeriod},
		{"2^44 MB wraps to 0 bytes", 17592186044416, 1, MaxMemoryMB << 20, cpuPeriod},
		{"2^43 MB wraps negative", 8796093022208, 1, MaxMemoryMB << 20, cpuPeriod},
		{"largest int", math.MaxInt, 1, MaxMemoryMB << 20, cpuPeriod},
		{"CPUs overflowing the quota", 0, 1e300, DefaultMemoryMB << 20, MaxCPUs * cpuPeriod},
		{"CPUs NaN", 0, math.NaN(), DefaultMemoryMB << 20, DefaultCPUs * cpuPeriod},
		{"CPUs +Inf", 0, math.Inf(1), DefaultMemoryMB << 20, MaxCPUs * cpuPeriod},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Harden(hostile(), "/b", Config{CgroupsPath: "/axocoatl/x", MemoryMB: tt.memoryMB, CPUs: tt.cpus})
			if err != nil {
				t.Fatal(err)
			}
			r := s.Linux.Resources
			if *r.Memory.Limit != tt.wantMem {
				t.Errorf("memory limit %d bytes, want %d", *r.Memory.Limit, tt.wantMem)
			}
			if *r.CPU.Quota != tt.wantQuota {
				t.Errorf("CPU quota %d, want %d", *r.CPU.Quota, tt.wantQuota)
			}
		})
	}
}
