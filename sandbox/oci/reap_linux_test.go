package oci

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/google/uuid"
)

// crashHelper starts this test binary as a process that owns an Oci sandbox (TestCrashHelper)
// with two pooled containers and, with call set, a spinning call; it returns once the helper
// reported that state. The caller kills it.
func crashHelper(t *testing.T, stateRoot, parent string, call bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "AXO_OCI_CRASH_HELPER="+stateRoot, "AXO_OCI_TOOLS="+env.toolsDir, "AXO_OCI_PARENT="+parent,
		"AXO_OCI_CRASH_CALL="+strconv.FormatBool(call))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	want := "POOL READY"
	if call {
		want = "CALL RUNNING"
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(90 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the helper ended before it was ready")
			}
			t.Log("helper: ", l)
			if strings.Contains(l, want) {
				go func() {
					for range lines {
					}
				}()
				return cmd
			}
		case <-timeout:
			t.Fatal("the helper did not get ready")
		}
	}
}

// TestCrashHelper is the process crashHelper starts.
func TestCrashHelper(t *testing.T) {
	root := os.Getenv("AXO_OCI_CRASH_HELPER")
	if root == "" {
		t.Skip("only run by crashHelper")
	}
	s, err := New(Config{StateRoot: root, BundleRoot: os.Getenv("AXO_OCI_TOOLS"), CgroupParent: os.Getenv("AXO_OCI_PARENT"), PoolSize: 2, NoSeccomp: noSeccomp()})
	if err != nil {
		t.Fatal(err)
	}
	env.toolsDir = os.Getenv("AXO_OCI_TOOLS")
	if err := s.Prepare(context.Background(), probeCall(`{}`)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ps := s.PoolStats(); len(ps) == 1 && ps[0].Ready == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pool did not fill")
		}
	}
	fmt.Println("POOL READY")
	if os.Getenv("AXO_OCI_CRASH_CALL") == "true" {
		// A cold call (another memory limit than the pool's, which stays full) that spins
		// until it is killed.
		c := probeCall(`{"op":"spin"}`)
		c.Limits.MemoryMB = 200
		go func() {
			out, err := s.Run(context.Background(), c)
			fmt.Printf("CALL ENDED: %+v %v\n", out, err)
		}()
		parent := "/" + os.Getenv("AXO_OCI_PARENT")
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if running(parent) {
				fmt.Println("CALL RUNNING")
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the call's tool never ran")
			}
		}
	}
	time.Sleep(time.Minute)
}

// running reports whether the probe tool runs in a cgroup under parent (a container init, until
// it execs the tool, is "runc:[2:INIT]").
func running(parent string) bool {
	for _, pid := range testutil.PidsInCgroups(cgroupDirs(parent)...) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if strings.Contains(string(st), " (tool) R") {
			return true
		}
	}
	return false
}

// TestOwnerKilledMidCall: SIGKILL of the process that owns a running call and two pooled
// containers leaves nothing within 2 s, without any other process starting on the state root.
func TestOwnerKilledMidCall(t *testing.T) {
	needContainers(t)
	stateRoot := t.TempDir()
	parent := "axocoatl-test-kill-" + uuid.NewString()[:8]
	cmd := crashHelper(t, stateRoot, parent, true)
	if n := len(testutil.PidsInCgroups(cgroupDirs("/" + parent)...)); n < 3 {
		t.Fatalf("%d processes in the helper's cgroups, want the spinning tool and two pooled inits", n)
	}
	if len(testutil.KeepersOf(cmd.Process.Pid)) != 1 {
		t.Fatal("the helper runs no keeper")
	}
	killed := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	// How long until no process is left (the goal is 1 s), then the full check at 2 s.
	for len(testutil.PidsInCgroups(cgroupDirs("/"+parent)...)) > 0 && time.Since(killed) < 2*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	gone := time.Since(killed)
	if gone > time.Second {
		t.Errorf("processes of the dead owner's containers ran %v after its death (goal: 1 s)", gone)
	}
	t.Logf("the dead owner's containers were gone %v after SIGKILL", gone.Round(time.Millisecond))
	time.Sleep(2*time.Second - time.Since(killed))
	cfg := Config{StateRoot: stateRoot, BundleRoot: env.toolsDir, CgroupParent: parent}
	assertClean(t, cfg)
	assertUnclaimed(t, stateRoot)
	for _, d := range cgroupDirs("/" + parent) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup parent left: %s", d)
		}
	}
}

// assertUnclaimed fails when an owner directory is left under the state root.
func assertUnclaimed(t *testing.T, stateRoot string) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(stateRoot, ownersDir))
	for _, e := range ents {
		t.Errorf("owner dir left: %s", e.Name())
	}
}

// TestReapAfterCrash: when the keeper dies with its owner (kill -9 of both), the containers stay,
// and the next process that starts on the state root reaps them: ReapDead (what a process calls
// whichever tiers it uses), also while another live sandbox uses the state root, and New.
func TestReapAfterCrash(t *testing.T) {
	needContainers(t)
	for _, via := range []string{"ReapDead", "ReapDeadBesideLive", "New"} {
		t.Run(via, func(t *testing.T) {
			stateRoot := t.TempDir()
			parent := "axocoatl-test-crash-" + uuid.NewString()[:8]
			cfg := Config{StateRoot: stateRoot, BundleRoot: env.toolsDir, CgroupParent: parent, NoSeccomp: noSeccomp()}
			var live *Sandbox
			if via == "ReapDeadBesideLive" {
				c := cfg
				c.PoolSize = 1
				var err error
				if live, err = New(c); err != nil {
					t.Fatal(err)
				}
				defer live.Close()
				if err := live.Prepare(context.Background(), probeCall(`{}`)); err != nil {
					t.Fatal(err)
				}
				for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					if ps := live.PoolStats(); len(ps) == 1 && ps[0].Ready == 1 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the live sandbox's pool did not fill")
					}
				}
			}
			cmd := crashHelper(t, stateRoot, parent, via != "New")
			// Stopped first: a live owner replaces a keeper that dies.
			_ = cmd.Process.Signal(syscall.SIGSTOP)
			for _, k := range testutil.KeepersOf(cmd.Process.Pid) {
				_ = syscall.Kill(k, syscall.SIGKILL)
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			time.Sleep(200 * time.Millisecond)
			want := 2
			if via != "New" {
				want = 3 // and the call
			}
			mine := 0
			if live != nil {
				mine = 1
			}
			left, _ := os.ReadDir(filepath.Join(stateRoot, ".libcontainer"))
			if len(left) != want+mine || len(testutil.PidsInCgroups(cgroupDirs("/"+parent)...)) < want+mine {
				var names []string
				for _, e := range left {
					names = append(names, e.Name())
				}
				owners, _ := os.ReadDir(filepath.Join(stateRoot, ownersDir))
				t.Fatalf("the crashed helper left %d containers (%v; owners %v) and %d processes, want %d to reap", len(left)-mine, names, owners, len(testutil.PidsInCgroups(cgroupDirs("/"+parent)...))-mine, want)
			}
			if via == "New" {
				s, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				ReapDead(cfg)
			}
			if live != nil {
				// The live sandbox's own container is untouched and serves a call.
				if left, _ := os.ReadDir(filepath.Join(stateRoot, ".libcontainer")); len(left) != 1 {
					t.Fatalf("%d containers after reaping beside a live sandbox, want its 1", len(left))
				}
				if out, err := run(t, live, `{"op":"echo"}`, 20*time.Second); err != nil || out.ExitCode != 0 {
					t.Fatalf("the live sandbox after the reap: %+v %v", out, err)
				}
				if err := live.Close(); err != nil {
					t.Fatal(err)
				}
			}
			assertClean(t, cfg)
			assertUnclaimed(t, stateRoot)
		})
	}
}
