package testutil

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/wasmbuild"
)

// LogBuffer collects what a logger writes, from any goroutine (a slog handler's io.Writer).
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// WasmBuildCache is the build cache the tests of every package share for Wasm modules they build
// from Go sources (keyed by the sources' hash, so a change rebuilds).
var WasmBuildCache = filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache")

// WasmModule builds the Go package pkgDir (GOOS=wasip1) into WasmBuildCache, once per source
// hash, and returns the module's bytes.
func WasmModule(tb testing.TB, pkgDir string, cfg wasmbuild.Config) []byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := wasmbuild.Cached(ctx, pkgDir, WasmBuildCache, cfg)
	if err != nil {
		tb.Fatalf("building %s for the Wasm tier: %v", pkgDir, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
