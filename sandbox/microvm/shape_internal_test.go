package microvm

import (
	"math"
	"testing"

	"github.com/axocoatl/isolation/sandbox"
)

// A VM's memory is bounded whatever a library caller passes: the VMM never gets a size that
// wrapped around or that no machine has.
func TestShapeBoundsMemory(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tt := range []struct {
		asked, want int
	}{
		{0, DefaultMemoryMB},
		{-1, DefaultMemoryMB},
		{64, MinMemoryMB}, // no driver here: the initramfs floor
		{2048, 2048},
		{17592186044416, sandbox.MaxMemoryMB},
		{math.MaxInt, sandbox.MaxMemoryMB},
	} {
		if got := s.shapeOf(sandbox.Limits{MemoryMB: tt.asked}).memMB; got != tt.want {
			t.Errorf("memory_mb %d: VM of %d MB, want %d", tt.asked, got, tt.want)
		}
	}
	if s.DefaultMemoryMB() != DefaultMemoryMB {
		t.Errorf("DefaultMemoryMB() = %d", s.DefaultMemoryMB())
	}
}
