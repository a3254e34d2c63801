package microvm_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// The main goroutine keeps the main thread (which the runtime never ends): goroutines that lock a
// thread and return then end a thread of their own, as libcontainer's container starts do.
func init() { runtime.LockOSThread() }

// A VMM booted from a goroutine whose OS thread then ends (the thread libcontainer locks for a
// container start) must keep running: its parent-death signal is tied to the forking thread.
func TestVMMOutlivesTheBootingThread(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	d := qemu.New(qemu.Config{})
	spec := microvm.BootSpec{ID: "thread", RunDir: t.TempDir(), Kernel: image.Kernel, Initrd: image.Initrd,
		Cmdline: microvm.BaseCmdline + " " + microvm.CmdlineChannel + "=" + d.GuestChannel(), VCPUs: 1, MemoryMB: 256}
	type res struct {
		m   microvm.Machine
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime ends this thread when we return
		m, err := d.Boot(context.Background(), spec)
		ch <- res{m, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.m.Kill()
	select {
	case <-r.m.Done():
		t.Fatal("the VMM died when the thread that started it ended (parent-death signal)")
	case <-time.After(time.Second):
	}
}

// A pooled VM whose VMM dies while idle is neither counted as ready nor handed out: the pool
// notices, replaces it, and the next call runs correctly, even one that arrives right after the
// kill.
func TestPooledVMKilledWhileIdle(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1})
	dir, entry := tool(t, "main.sh", shEcho, 0o644)
	run := func(id string) {
		t.Helper()
		o, err := s.Run(context.Background(), call(id, isolation.RequireShell, dir, entry, `{"k":1}`, 20*time.Second))
		if err != nil || !strings.Contains(string(o.Output), `"got":{"k":1}`) {
			t.Fatalf("%s: outcome %+v, err %v", id, o, err)
		}
	}
	kill := func() int {
		t.Helper()
		waitPool(t, s, 1)
		// The VM of the call before is torn down after its answer, on a goroutine of its own:
		// wait for its qemu to be gone, so the one left is the pooled one.
		pids := testutil.QemuPIDs(s.RunDir())
		for deadline := time.Now().Add(10 * time.Second); len(pids) > 1 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			pids = testutil.QemuPIDs(s.RunDir())
		}
		if len(pids) != 1 {
			t.Fatalf("want one pooled qemu under %s, found %v", s.RunDir(), pids)
		}
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		return pids[0]
	}
	if err := s.Prepare(context.Background(), call("p", isolation.RequireShell, dir, entry, `{}`, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Killed, then left alone: the pool stops counting it within a moment (its replacement
	// boots for a second or more under TCG).
	pid := kill()
	deadline := time.Now().Add(3 * time.Second)
	for {
		if ps := s.PoolStats(); len(ps) == 1 && ps[0].Ready == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool still counts the killed VM (pid %d) as ready: %+v", pid, s.PoolStats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	run("after-kill")
	// Killed just before a call takes it: the call still answers.
	kill()
	run("right-after-kill")
	if st := s.Stats(); st.DeadPooled < 1 {
		t.Errorf("stats %+v: the dead pooled VMs were not counted", st)
	}
}

// A VMM killed in the middle of a call is the tier's failure, typed and naming the tier, and the
// call is not run a second time.
func TestVMMKilledMidCallIsSandboxFailed(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1})
	dir, entry := tool(t, "main.sh", "sleep 30\n", 0o644)
	c := call("midcall", isolation.RequireShell, dir, entry, `{}`, 60*time.Second)
	if err := s.Prepare(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	waitPool(t, s, 1)
	pids := testutil.QemuPIDs(s.RunDir())
	if len(pids) != 1 {
		t.Fatalf("want one pooled qemu, found %v", pids)
	}
	time.AfterFunc(1500*time.Millisecond, func() { syscall.Kill(pids[0], syscall.SIGKILL) }) // the pooled VM runs the tool by then
	_, err := s.Run(context.Background(), c)
	var ie *isolation.Error
	if !errors.Is(err, isolation.ErrSandboxFailed) || !errors.As(err, &ie) || !ie.HasTier || ie.Tier != isolation.TierMicroVM {
		t.Fatalf("err = %v (%#v), want ErrSandboxFailed naming the microVM tier", err, err)
	}
	if st := s.Stats(); st.Pooled != 1 || st.Cold != 0 {
		t.Errorf("stats %+v: the call should have run once, in the pooled VM", st)
	}
	t.Logf("err: %v", err)
}

// pyLeaver starts a grandchild in a session of its own that keeps the tool's stdout and stderr
// open, writes its output and exits with the code its input names.
const pyLeaver = `import json, subprocess, sys
subprocess.Popen(["sleep", "300"], start_new_session=True)
code = json.load(open("/axocoatl/input.json"))["code"]
json.dump({"code": code}, open("/axocoatl/output.json", "w"))
print("leaving", code, file=sys.stderr, flush=True)
sys.exit(code)
`

// A process the tool leaves behind holding its stdout must not change the call's outcome: the
// tool's exit status decides (0 with its output, 3 as the tool's failure), not the agent.
func TestGrandchildHoldingStdout(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	dir, entry := tool(t, "main.py", pyLeaver, 0o644)
	for _, code := range []int{0, 3} {
		o, err := s.Run(context.Background(), call("leaver", isolation.RequirePython, dir, entry, `{"code":`+strconv.Itoa(code)+`}`, 30*time.Second))
		if err != nil {
			t.Fatalf("exit %d: err %v (outcome %+v)", code, err, o)
		}
		if o.ExitCode != code || !strings.Contains(string(o.Output), `"code": `+strconv.Itoa(code)) || !strings.Contains(o.Stderr, "leaving") {
			t.Errorf("exit %d: outcome %+v", code, o)
		}
	}
}

// The per-shape state is bounded: a second shape beyond MaxShapes drops the first one's pool at
// once, and a shape unused for PoolIdle loses its pool (and its VMs) too.
func TestShapesAreBounded(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1, PoolIdle: 2 * time.Second, MaxShapes: 1})
	dir, entry := tool(t, "main.sh", shEcho, 0o644)
	a := call("a", isolation.RequireShell, dir, entry, `{}`, 20*time.Second)
	b := a
	b.Limits.MemoryMB = 320
	for _, c := range []sandbox.Call{a, b} {
		if err := s.Prepare(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	if ps := s.PoolStats(); len(ps) != 1 || ps[0].Tool != "vm-1cpu-320mb" {
		t.Fatalf("pools %+v, want only the 320 MB shape's", ps)
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(s.PoolStats()) > 0 || len(testutil.QemuPIDs(s.RunDir())) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after idling: pools %+v, VMMs %v", s.PoolStats(), testutil.QemuPIDs(s.RunDir()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
