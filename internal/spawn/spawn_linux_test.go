package spawn

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// The main goroutine keeps the main thread, which the runtime never ends (it wedges it instead):
// the goroutines below then run on other threads, as a server's goroutines mostly do.
func init() { runtime.LockOSThread() }

// startFromDoomedThread starts `sleep 30` with a parent-death signal from a goroutine that locks
// its OS thread and returns without unlocking it, as libcontainer's container starts do: the
// runtime then ends that thread.
func startFromDoomedThread(t *testing.T, start func(*exec.Cmd) error) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- start(cmd)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// alive says whether cmd is still running 300 ms later (the doomed thread ends well within it).
func alive(cmd *exec.Cmd) bool {
	done := make(chan struct{})
	go func() { cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
		return false
	case <-time.After(300 * time.Millisecond):
		return true
	}
}

func TestChildOutlivesTheStartingThread(t *testing.T) {
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("sleep not found")
	}
	// The defect: forked on the doomed thread, the child dies with it.
	if old := startFromDoomedThread(t, (*exec.Cmd).Start); alive(old) {
		t.Fatal("a child forked on a thread that exited survived: the kernel no longer ties Pdeathsig to the thread, this package may be unnecessary")
	}
	// Through Start it survives.
	if cmd := startFromDoomedThread(t, Start); !alive(cmd) {
		t.Fatal("a child started through spawn.Start died when the caller's thread exited")
	}
}
