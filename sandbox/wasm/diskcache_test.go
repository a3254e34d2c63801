package wasm

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestTrimCacheDir: the least recently used compiled modules go first until the cache fits;
// abandoned temporary files go, fresh ones (a write in progress) and files that are not
// wazero's stay.
func TestTrimCacheDir(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	files := []struct {
		path string
		size int
		age  time.Duration
		keep bool
	}{
		{"wazero-v1.0.0-amd64-linux/aa", 100, 48 * time.Hour, false}, // another version, unused for days
		{"wazero-v1.12.0-amd64-linux/bb", 100, time.Hour, false},
		{"wazero-v1.12.0-amd64-linux/cc", 100, time.Minute, true},
		{"wazero-v1.12.0-amd64-linux/dd", 100, time.Second, true},
		{"wazero-v1.12.0-amd64-linux/ee.123.tmp", 50, 2 * time.Hour, false},
		{"wazero-v1.12.0-amd64-linux/ff.456.tmp", 50, time.Second, true},
		{"notes.txt", 1000, 72 * time.Hour, true},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, f.size), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, now.Add(-f.age), now.Add(-f.age)); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := trimCacheDir(dir, 250, now)
	if err != nil {
		t.Fatal(err)
	}
	if removed != 250 {
		t.Errorf("removed %d bytes, want 250 (two modules and a stale temporary file)", removed)
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(dir, f.path))
		if kept := err == nil; kept != f.keep {
			t.Errorf("%s: kept=%v, want %v", f.path, kept, f.keep)
		}
	}
}

// TestNewTrimsCacheDir: a Sandbox bounds its cache dir when it starts, whatever earlier
// processes left there.
func TestNewTrimsCacheDir(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "wazero-v0.9.0-amd64-linux", "0123")
	if err := os.MkdirAll(filepath.Dir(old), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(old, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t, Config{CacheDir: dir, MaxCacheDirBytes: 1024})
	defer s.Close()
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("the cache dir was not trimmed at start: %v", err)
	}
}
