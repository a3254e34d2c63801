package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
)

func TestBinaryBackends(t *testing.T) {
	needContainers(t)
	for _, kind := range []string{BackendCrun, BackendRunc} {
		t.Run(kind, func(t *testing.T) {
			if _, err := exec.LookPath(kind); err != nil {
				t.Skipf("%s is not installed (apt-get install %s)", kind, kind)
			}
			s := newSandbox(t, func(c *Config) { c.Backend = kind })
			out, err := run(t, s, `{"op":"echo","n":1}`, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m := decode(t, out); m["echo"] == nil || out.Backend != kind {
				t.Fatalf("outcome %+v", out)
			}
			out, err = run(t, s, `{"op":"whoami"}`, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m := decode(t, out); m["pid"] != float64(1) || fmt.Sprint(m["ifaces"]) != "[lo]" || m["cap_eff"] != "0000000000000000" || m["nofile"] != float64(DefaultNofile) {
				t.Fatalf("isolation: %s", out.Output)
			}
			out, err = run(t, s, `{"op":"fail","code":3,"msg":"nope"}`, 30*time.Second)
			if err != nil || out.ExitCode != 3 || !strings.Contains(out.Stderr, "nope") {
				t.Fatalf("non-zero exit: %+v %v", out, err)
			}
			if _, err := run(t, s, `{"op":"spin"}`, 1500*time.Millisecond); !errors.Is(err, isolation.ErrTimeout) {
				t.Fatalf("spin: %v, want ErrTimeout", err)
			}
			c := probeCall(`{"op":"alloc"}`)
			c.Limits.MemoryMB = 64
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := s.Run(ctx, c); !errors.Is(err, isolation.ErrMemoryLimit) {
				t.Fatalf("alloc: %v, want ErrMemoryLimit", err)
			}
		})
	}
}

// TestRuntimeRoot runs Shell and Arbitrary tools on a runtime root built from busybox-static.
func TestRuntimeRoot(t *testing.T) {
	needContainers(t)
	rt := filepath.Join(t.TempDir(), "rootfs")
	testutil.BusyboxTree(t, rt, "sh", "cat", "id", "echo")
	tool := filepath.Join(env.toolsDir, "shtool")
	if err := os.MkdirAll(tool, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `set -e
printf '{"uid":"%s","input":%s}' "$(id -u)" "$(cat /axocoatl/input.json)" > /axocoatl/output.json
`
	if err := os.WriteFile(filepath.Join(tool, "run.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(env.probeBin, filepath.Join(tool, "probe")); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t, func(c *Config) { c.RuntimeRoot = rt })
	if why := s.Supports(isolation.RequireShell); why != "" {
		t.Fatal(why)
	}
	if why := s.Supports(isolation.RequirePython); !strings.Contains(why, "python3") {
		t.Fatalf("Python on a root without python3: %q", why)
	}
	cases := []struct {
		rt    isolation.RuntimeRequirement
		entry string
		input string
		check func(map[string]any) error
	}{
		{isolation.RequireShell, "run.sh", `{"x":5}`, func(m map[string]any) error {
			if m["uid"] != "65534" || fmt.Sprint(m["input"]) != "map[x:5]" {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{isolation.RequireArbitrary, "probe", `{"op":"whoami"}`, func(m map[string]any) error {
			if m["uid"] != float64(65534) || m["cap_eff"] != "0000000000000000" {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{isolation.RequireArbitrary, "probe", `{"op":"write","path":"/axocoatl/tool/probe"}`, func(m map[string]any) error {
			if m["error"] == "" {
				return errors.New("the tool folder is writable")
			}
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.rt.String()+"/"+tc.entry, func(t *testing.T) {
			c := sandbox.Call{Tool: "shtool", Runtime: tc.rt, Dir: tool, Entrypoint: filepath.Join(tool, tc.entry),
				Input: []byte(tc.input), Limits: sandbox.Limits{}.WithDefaults()}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := s.Run(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(decode(t, out)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNewRejectsBadConfig checks config validation that needs no containers.
func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{StateRoot: t.TempDir(), Backend: "docker"}); err == nil {
		t.Fatal("unknown backend accepted")
	}
	s, err := New(Config{StateRoot: t.TempDir(), Backend: BackendCrun, RuntimeBinary: "/nonexistent/crun"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if a := s.Probe(context.Background()); a.Available || !strings.Contains(a.Reason, "/nonexistent/crun") || a.Fix == "" {
		t.Fatalf("probe with a missing runtime binary: %+v", a)
	}
	if s.Tier() != isolation.TierOCI {
		t.Fatal("tier")
	}
	_ = json.Valid
}
