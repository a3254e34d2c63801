package fakenet

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/egresstest"
)

// RunTestInNetns runs the test named child of this binary in a network namespace of its own
// (RunInNetns) and fails t, with the child's output, unless the child passed.
func RunTestInNetns(t *testing.T, child string, env ...string) {
	t.Helper()
	out, err := RunInNetns(child, env...)
	if err != nil || !strings.Contains(string(out), "--- PASS: "+child) {
		t.Fatalf("%s: %v\n%s", child, err, out)
	}
	t.Logf("%s", out)
}

// StartWithGate starts the fake internet and an egress gate resolving through its DNS server,
// with the documentation ranges public until t ends. Only in a test run by RunInNetns (skipped
// elsewhere).
func StartWithGate(t *testing.T) (*Internet, *egress.Gate) {
	t.Helper()
	if os.Getenv(InNetns) == "" {
		t.Skip("only run in a network namespace of its own, by its parent test")
	}
	in, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Close)
	t.Cleanup(egresstest.MarkTestNetPublic())
	g, err := egress.NewGate(egress.GateConfig{Resolver: in.Resolver,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	return in, g
}

// BuildNetprobe builds the netprobe tool, static and stripped (a tool folder sent to a VM holds
// at most 8 MiB), to the file bin.
func BuildNetprobe(bin string) error {
	//lint:ignore SA1019 tests run where the toolchain that built them is
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/axocoatl/isolation/internal/fakenet/netprobe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build netprobe: %v: %s", err, out)
	}
	return nil
}
