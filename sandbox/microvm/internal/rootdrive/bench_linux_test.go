package rootdrive

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// benchTree writes a 50 MB tree shaped like a small image's root: 2,000 files (most small, a
// few large) in 100 directories. Random contents: nothing compresses or deduplicates.
func benchTree(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	buf := make([]byte, 4<<20)
	_, _ = rand.Read(buf)
	var total int
	for i := 0; i < 2000; i++ {
		size := 8 << 10
		if i%100 == 0 {
			size = 2 << 20
		}
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%100), fmt.Sprintf("f%04d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		off := (i * 4096) % (len(buf) - size)
		if err := os.WriteFile(p, buf[off:off+size], 0o644); err != nil {
			b.Fatal(err)
		}
		total += size
	}
	for total < 50<<20 {
		size := min(4<<20, 50<<20-total)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("big%d", total)), buf[:size], 0o644); err != nil {
			b.Fatal(err)
		}
		total += size
	}
	return dir
}

// BenchmarkDrive: building the drive of a 50 MB tree (content digest, mkfs.ext4 -d, mount
// points), finding it again in a fresh process (a metadata walk and the index), and in a
// process that looked at the tree less than Recheck ago (no I/O).
//
//	go test -run '^$' -bench Drive -benchtime 5x ./sandbox/microvm/internal/rootdrive/
func BenchmarkDrive(b *testing.B) {
	needTools(b)
	tree := benchTree(b)
	ctx := context.Background()
	b.Run("build-50MB", func(b *testing.B) {
		var ds []time.Duration
		for i := 0; i < b.N; i++ {
			c, err := New(Config{Dir: filepath.Join(b.TempDir(), "drives"), MaxBytes: -1, Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			d, err := c.Open(ctx, tree)
			ds = append(ds, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			d.Close()
		}
		report(b, ds)
	})
	dir := filepath.Join(b.TempDir(), "drives")
	c, err := New(Config{Dir: dir, MaxBytes: -1, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	d, err := c.Open(ctx, tree)
	if err != nil {
		b.Fatal(err)
	}
	d.Close()
	b.Run("cached-fresh-process", func(b *testing.B) {
		var ds []time.Duration
		for i := 0; i < b.N; i++ {
			c, err := New(Config{Dir: dir, MaxBytes: -1, Logger: quiet}) // a new process: nothing in memory
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			d, err := c.Open(ctx, tree)
			ds = append(ds, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			d.Close()
		}
		report(b, ds)
	})
	b.Run("cached-recent", func(b *testing.B) {
		var ds []time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			d, err := c.Open(ctx, tree)
			ds = append(ds, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			d.Close()
		}
		report(b, ds)
	})
}

func report(b *testing.B, ds []time.Duration) {
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "p50-ms")
}

var quiet = slog.New(slog.DiscardHandler)
