//go:build unix

package keeper

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test keeper's reaping writes "reaped" into the file its parameters name.
func init() {
	Hook("test", func(params []byte, log *slog.Logger) (func(), error) {
		var p struct{ File string }
		if err := json.Unmarshal(params, &p); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p.File, []byte("armed"), 0o600); err != nil {
			return nil, err
		}
		return func() { _ = os.WriteFile(p.File, []byte("reaped"), 0o600) }, nil
	})
}

type params struct{ File string }

func read(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// waitFor polls until path holds want, at most d.
func waitFor(path, want string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if read(path) == want {
			return true
		}
	}
	return false
}

func TestStopReapsAndWaits(t *testing.T) {
	f := filepath.Join(t.TempDir(), "state")
	k, err := Start("test", params{f}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(f, "armed", 10*time.Second) {
		t.Fatalf("the keeper did not set up: %q", read(f))
	}
	if err := k.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	// Stop returned after the keeper exited, so its reaping is done.
	if got := read(f); got != "reaped" {
		t.Fatalf("after Stop: %q", got)
	}
	if err := k.Stop(time.Second); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// The owner process (this binary re-executed) starts a keeper and prints its pid; the test then
// SIGKILLs the owner and expects the keeper's reaping within a second.
const ownerEnv = "AXO_KEEPER_OWNER"

func TestOwnerHelper(t *testing.T) {
	f := os.Getenv(ownerEnv)
	if f == "" {
		t.Skip("only run by TestOwnerDeathTriggersReap")
	}
	k, err := Start("test", params{f}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("AXO_KEEPER_KILL_KEEPER") != "" {
		// The keeper is killed while this owner lives: another must take its place.
		if !waitFor(f, "armed", 10*time.Second) {
			t.Fatal("no keeper")
		}
		first := k.PID()
		os.Remove(f)
		_ = syscall.Kill(first, syscall.SIGKILL)
		for deadline := time.Now().Add(10 * time.Second); k.PID() == first; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the keeper was not replaced")
			}
		}
	}
	if !waitFor(f, "armed", 10*time.Second) {
		t.Fatal("no keeper")
	}
	os.Stdout.WriteString("KEEPER " + strconv.Itoa(k.PID()) + "\n")
	time.Sleep(time.Minute)
}

func TestOwnerDeathTriggersReap(t *testing.T) {
	for _, name := range []string{"first keeper", "replaced keeper"} {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "state")
			cmd := exec.Command(os.Args[0], "-test.run=^TestOwnerHelper$")
			cmd.Env = append(os.Environ(), ownerEnv+"="+f)
			if name == "replaced keeper" {
				cmd.Env = append(cmd.Env, "AXO_KEEPER_KILL_KEEPER=1")
			}
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			sc := bufio.NewScanner(out)
			var keeper int
			for sc.Scan() {
				if p, ok := strings.CutPrefix(sc.Text(), "KEEPER "); ok {
					keeper, _ = strconv.Atoi(p)
					break
				}
			}
			if keeper == 0 || read(f) != "armed" {
				t.Fatalf("the owner did not arm a keeper (%q)", read(f))
			}
			// The keeper ignores what a terminal or a service manager sends its owner.
			_ = syscall.Kill(keeper, syscall.SIGTERM)
			_ = syscall.Kill(keeper, syscall.SIGINT)
			time.Sleep(50 * time.Millisecond)
			if syscall.Kill(keeper, 0) != nil || read(f) != "armed" {
				t.Fatal("SIGTERM or SIGINT ended the keeper")
			}
			killed := time.Now()
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if !waitFor(f, "reaped", 2*time.Second) {
				t.Fatalf("no reaping 2 s after the owner's death: %q", read(f))
			}
			if d := time.Since(killed); d > time.Second {
				t.Errorf("reaped %v after the owner's death (goal: 1 s)", d)
			}
		})
	}
}

func TestIsKeeperNeedsArgAndEnv(t *testing.T) {
	args := os.Args
	defer func() { os.Args = args }()
	os.Args = []string{"x", arg, "test"}
	if IsKeeper("test") {
		t.Fatal("the argument alone made a keeper")
	}
	t.Setenv(envKind, "test")
	if !IsKeeper("test") || IsKeeper("other") {
		t.Fatal("argument and environment")
	}
	os.Args = []string{"x", "run", "test"}
	if IsKeeper("test") {
		t.Fatal("the environment alone made a keeper")
	}
}
