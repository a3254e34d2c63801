package qemu

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pruneStale removes only old empty cgroups: a young one may be being set up, and one that holds
// a process cannot be removed (modelled here by a directory that is not empty).
func TestPruneStale(t *testing.T) {
	parent := t.TempDir()
	old := time.Now().Add(-2 * staleAfter)
	dirs := []struct {
		name             string
		old, full, stays bool
	}{
		{cgroupPrefix + "dead", true, false, false},
		{"not-ours", true, false, true},
		{cgroupPrefix + "young", false, false, true},
		{cgroupPrefix + "live", true, true, true},
	}
	for _, d := range dirs {
		p := filepath.Join(parent, d.name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if d.full {
			if err := os.WriteFile(filepath.Join(p, "cgroup.procs"), []byte("1"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if d.old {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	pruneStale(parent)
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(parent, d.name)); (err == nil) != d.stays {
			t.Errorf("%s: exists %v, want %v", d.name, err == nil, d.stays)
		}
	}
}
