package microvm_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// pyBomb allocates (and touches: bytearray zeroes its pages) 1 MiB after 1 MiB without bound.
const pyBomb = `import json
hoard = []
while True:
    hoard.append(bytearray(1 << 20))
json.dump({"survived": len(hoard)}, open("/axocoatl/output.json", "w"))
`

// A tool that allocates without bound in a VM of the smallest size is stopped by the guest
// kernel, and the call fails with the memory-limit class, not as a crash or a timeout.
func TestMemoryBombIsMemoryLimit(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	dir, entry := tool(t, "bomb.py", pyBomb, 0o644)
	c := call("bomb", isolation.RequirePython, dir, entry, `{}`, 60*time.Second)
	c.Limits.MemoryMB = microvm.MinMemoryMB
	o, err := s.Run(context.Background(), c)
	if !errors.Is(err, isolation.ErrMemoryLimit) {
		t.Fatalf("err = %v (outcome %+v), want ErrMemoryLimit", err, o)
	}
	var ie *isolation.Error
	if !errors.As(err, &ie) || ie.ExitCode == 0 {
		t.Errorf("error %#v should carry the tool's non-zero exit code", err)
	}
	if o.Output != nil {
		t.Errorf("a killed tool produced output %q", o.Output)
	}
	t.Logf("bomb stopped: %v", err)
}

// orphanHelperEnv makes the test binary, re-executed by TestOrphanedVMsAreReaped, a process that
// boots a VM under the given run root, reports it and waits to be killed.
const orphanHelperEnv = "AXO_VM_ORPHAN_HELPER"

// orphanHelper runs in the helper process: it keeps one pooled VM at READY and prints
// "READY <its run dir>" once the VM is up, then blocks until SIGKILLed.
func orphanHelper(root string) {
	s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{qemu.New(qemu.Config{})}, DataDir: testDataDir, RunDir: root, PoolSize: 1})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if err := s.Prepare(context.Background(), call("orphan", isolation.RequireShell, "/", "/x", `{}`, time.Minute)); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if ps := s.PoolStats(); len(ps) == 1 && ps[0].Ready == 1 {
			fmt.Println("READY", s.RunDir())
			select {} // wait for SIGKILL
		}
	}
	fmt.Println("ERROR pool never filled")
	os.Exit(1)
}

// A process that crashes (SIGKILL: no Close, no deferred cleanup) leaves its run dir behind; the
// next New reaps it, and kills a VMM still running there.
func TestOrphanedVMsAreReaped(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	root := filepath.Join(runRoot, "orphans")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), orphanHelperEnv+"="+root)
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	dead, ok := strings.CutPrefix(strings.TrimSpace(line), "READY ")
	if !ok {
		helper.Process.Kill()
		helper.Wait()
		t.Fatalf("helper: %q", line)
	}
	if len(testutil.QemuPIDs(dead)) == 0 {
		t.Fatalf("the helper reported a VM but no qemu runs under %s", dead)
	}
	// The helper's keeper dies with it (kill -9 of both; the helper is stopped first, since a
	// live owner replaces a keeper that dies).
	_ = helper.Process.Signal(syscall.SIGSTOP)
	keepers := testutil.KeepersOf(helper.Process.Pid)
	if len(keepers) != 1 {
		t.Errorf("the helper runs %d keepers, want 1", len(keepers))
	}
	for _, k := range keepers {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	// A killed keeper holds the run dir's lock until it has exited, which under load takes a
	// while; New skips a locked dir (CI saw "New did not kill the orphan VMM" once).
	for _, k := range keepers {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", k)); err != nil || strings.Contains(string(st), ") Z ") {
				break
			}
		}
	}
	if _, err := os.Stat(dead); err != nil {
		t.Fatalf("the crashed helper's run dir should still be there to reap: %v", err)
	}

	// A VMM that outlived its owner (the driver's Pdeathsig normally prevents that, a VMM started
	// some other way or a pid namespace may not): boot one into the dead process's run dir.
	live := filepath.Join(dead, "axo-live")
	if err := os.Mkdir(live, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := qemu.New(qemu.Config{}).Boot(context.Background(), microvm.BootSpec{ID: "axo-live", RunDir: live,
		Kernel: image.Kernel, Initrd: image.Initrd, Cmdline: microvm.BaseCmdline, VCPUs: 1, MemoryMB: microvm.MinMemoryMB})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	if len(testutil.QemuPIDs(live)) != 1 {
		t.Fatalf("the orphan VMM under %s is not running", live)
	}

	s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{qemu.New(qemu.Config{})}, DataDir: testDataDir, RunDir: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("New did not kill the orphan VMM (pid %d)", m.PID())
	}
	if n := len(testutil.QemuPIDs(dead)); n != 0 {
		t.Errorf("%d qemu processes still run under the crashed process's run dir", n)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the crashed process's run dir %s survived New: %v", dead, err)
	}
	if _, err := os.Stat(s.RunDir()); err != nil {
		t.Errorf("New's own run dir: %v", err)
	}
}

// TestOwnerKilledWithPooledVM: SIGKILL of the process that owns a pooled VM leaves, 2 s later and
// without any other process starting, no VMM and no run dir.
func TestOwnerKilledWithPooledVM(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	root := filepath.Join(runRoot, "killed")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), orphanHelperEnv+"="+root)
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	dir, ok := strings.CutPrefix(strings.TrimSpace(line), "READY ")
	if !ok {
		helper.Process.Kill()
		helper.Wait()
		t.Fatalf("helper: %q", line)
	}
	if len(testutil.QemuPIDs(dir)) == 0 || len(testutil.KeepersOf(helper.Process.Pid)) != 1 {
		helper.Process.Kill()
		helper.Wait()
		t.Fatalf("the helper reported a pooled VM but runs %d qemu and %d keepers", len(testutil.QemuPIDs(dir)), len(testutil.KeepersOf(helper.Process.Pid)))
	}
	killed := time.Now()
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	for len(testutil.QemuPIDs(dir)) > 0 && time.Since(killed) < 2*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	if gone := time.Since(killed); gone > time.Second {
		t.Errorf("the dead owner's VMM ran %v after its death (goal: 1 s)", gone)
	}
	time.Sleep(2*time.Second - time.Since(killed))
	if n := len(testutil.QemuPIDs(dir)); n != 0 {
		t.Errorf("%d qemu processes still run under the dead owner's run dir", n)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead owner's run dir %s survived: %v", dir, err)
	}
}
