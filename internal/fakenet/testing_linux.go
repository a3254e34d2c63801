package fakenet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/egresstest"
	"github.com/axocoatl/isolation/sandbox"
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

// Runner is a sandbox (a tier) as the probe tests call it.
type Runner interface {
	Run(ctx context.Context, call sandbox.Call) (sandbox.Outcome, error)
}

// RunProbe runs a netprobe call in s and returns its results, failing t if the call or the tool
// fails.
func RunProbe(t testing.TB, s Runner, call sandbox.Call) []ProbeResult {
	t.Helper()
	out, err := s.Run(context.Background(), call)
	if err != nil {
		t.Fatalf("run: %v (stderr %s)", err, out.Stderr)
	}
	if out.ExitCode != 0 {
		t.Fatalf("netprobe exited %d: %s", out.ExitCode, out.Stderr)
	}
	var r struct {
		Results []ProbeResult `json:"results"`
	}
	if err := json.Unmarshal(out.Output, &r); err != nil {
		t.Fatalf("output %s: %v", out.Output, err)
	}
	return r.Results
}

// Policy parses patterns into a policy, failing t on a bad one.
func Policy(t testing.TB, patterns ...string) egress.Policy {
	t.Helper()
	ps, err := egress.ParsePatterns(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return egress.NewPolicy(ps...)
}

// LinksWith lists the links of this network namespace whose names start with prefix.
func LinksWith(prefix string) []string {
	ls, _ := netlink.LinkList()
	var out []string
	for _, l := range ls {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// AssertNetGone fails t unless, within 10 s, every link whose name starts with prefix (a callnet
// pool's host sides, and with them its namespaces, pairs and taps) is gone, and then the
// nftables table inet table is too.
func AssertNetGone(t testing.TB, prefix, table string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left := LinksWith(prefix)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("links left: %v", left)
		}
	}
	if out, err := exec.Command("nft", "list", "table", "inet", table).CombinedOutput(); err == nil {
		t.Fatalf("table %s left:\n%s", table, out)
	}
}
