package oci

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/subid"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
)

// hostBase parses a uid_map line "0 HOST COUNT" (as the probe tool reports it) into HOST, failing
// the test unless container id 0 maps to an id of IDUser's range, not to a host id in use.
func hostBase(t *testing.T, uidMap any) uint32 {
	t.Helper()
	f := strings.Fields(fmt.Sprint(uidMap))
	if len(f) != 3 || f[0] != "0" || f[2] != strconv.Itoa(idSlotSize) {
		t.Fatalf("uid_map %q: want container ids 0-65535 mapped to a slot", uidMap)
	}
	base, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(subid.UIDFile)
	for _, r := range subid.Of(subid.Parse(b), DefaultIDUser, "") {
		if base >= uint64(r.Start) && base+idSlotSize <= r.End() {
			return uint32(base)
		}
	}
	t.Fatalf("container root is host uid %d, outside the ranges of %s in %s", base, DefaultIDUser, subid.UIDFile)
	return 0
}

// Two calls running at the same time run as different host uids.
func TestUserNSConcurrentCallsDistinctIDs(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	type res struct {
		out sandbox.Outcome
		err error
	}
	long := make(chan res, 1)
	go func() {
		out, err := run(t, s, `{"op":"sleep","ms":3000}`, 30*time.Second)
		long <- res{out, err}
	}()
	time.Sleep(500 * time.Millisecond)
	out, err := run(t, s, `{"op":"sleep","ms":0}`, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-long:
		t.Fatal("the first call ended before the second: they did not overlap")
	default:
	}
	short := hostBase(t, decode(t, out)["uid_map"])
	r := <-long
	if r.err != nil {
		t.Fatal(r.err)
	}
	first := hostBase(t, decode(t, r.out)["uid_map"])
	if first == short {
		t.Fatalf("two concurrent calls both ran as host uid %d", first)
	}
}

// The I/O dir of a running call belongs to the call's host uid only: a host process as nobody
// (which script tools ran as on the host before user namespaces) can neither read input.json
// nor forge output.json.
func TestUserNSIODirPrivate(t *testing.T) {
	needContainers(t)
	rt, tool := shellRuntime(t, "private", `set -e
printf '{"uid_map":"%s"}' "$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')" > /axocoatl/output.json
sleep 3
`)
	// A state root host users can traverse, as the default /run/axocoatl/oci is: only the I/O
	// dir's own mode and owner keep them out.
	stateRoot, err := os.MkdirTemp("", "oci-userns-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	if err := os.Chmod(stateRoot, 0o711); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t, func(c *Config) { c.RuntimeRoot = rt; c.StateRoot = stateRoot })
	call := sandbox.Call{Tool: "private", Runtime: isolation.RequireShell, Dir: tool, Entrypoint: filepath.Join(tool, "run.sh"),
		Input: []byte(`{"api_key":"sk-secret"}`), Limits: sandbox.Limits{}.WithDefaults()}
	type res struct {
		out sandbox.Outcome
		err error
	}
	done := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := s.Run(ctx, call)
		done <- res{out, err}
	}()
	// Wait until the tool wrote its output: the call's I/O dir then holds both files.
	var ioDir string
	deadline := time.Now().Add(20 * time.Second)
	for ioDir == "" {
		if time.Now().After(deadline) {
			t.Fatal("the call's output.json never appeared")
		}
		ents, _ := os.ReadDir(s.ioRoot)
		for _, e := range ents {
			d := filepath.Join(s.ioRoot, e.Name())
			if strings.HasPrefix(e.Name(), "axocoatl-private-") {
				if _, err := os.Stat(filepath.Join(d, sandbox.OutputFile)); err == nil {
					ioDir = d
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(ioDir, &st); err != nil {
		t.Fatal(err)
	}
	asNobody := func(args ...string) error {
		cmd := exec.Command("/bin/busybox", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := asNobody("cat", filepath.Join(ioDir, sandbox.InputFile)); err == nil {
		t.Error("a host process as nobody read the call's input.json")
	}
	if err := asNobody("sh", "-c", `echo '{"tampered":true}' > "$0"`, filepath.Join(ioDir, sandbox.OutputFile)); err == nil {
		t.Error("a host process as nobody wrote the call's output.json")
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	m := decode(t, r.out)
	if m["tampered"] != nil {
		t.Fatalf("the caller received a forged output: %s", r.out.Output)
	}
	base := hostBase(t, m["uid_map"])
	if st.Mode&0o7777 != 0o700 || st.Uid != base+nobody || st.Uid == nobody {
		t.Errorf("I/O dir mode %o owner %d: want 0700 owned by the call's host uid %d", st.Mode&0o7777, st.Uid, base+nobody)
	}
}

// A bundle running as uid 0 cannot read the /proc files that only host root may read.
func TestUserNSProcRootOnlyFiles(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	for _, p := range []string{"/proc/kpageflags", "/proc/slabinfo", "/proc/vmallocinfo"} {
		t.Run(filepath.Base(p), func(t *testing.T) {
			if f, err := os.Open(p); err != nil {
				t.Skipf("the host cannot read %s either: %v", p, err)
			} else {
				f.Close()
			}
			out, err := run(t, s, fmt.Sprintf(`{"op":"read","path":%q}`, p), 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m := decode(t, out); m["error"] == "" || m["error"] == nil {
				t.Fatalf("a bundle running as uid 0 read %s", p)
			}
		})
	}
}

// One call exhausting its inotify instances does not make another call's inotify_init fail:
// the per-user counts are the slot's, not shared by every container (nor with the host).
func TestUserNSInotifyNotShared(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	type res struct {
		out sandbox.Outcome
		err error
	}
	hog := make(chan res, 1)
	go func() {
		out, err := run(t, s, `{"op":"inotify","max":100000,"ms":3000}`, 30*time.Second)
		hog <- res{out, err}
	}()
	time.Sleep(800 * time.Millisecond) // the hog has opened all it can by now
	out, err := run(t, s, `{"op":"inotify","max":1}`, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-hog:
		t.Fatal("the exhausting call ended before the second: they did not overlap")
	default:
	}
	other := decode(t, out)
	r := <-hog
	if r.err != nil {
		t.Fatal(r.err)
	}
	h := decode(t, r.out)
	if h["error"] == "" || h["n"] == float64(100000) {
		t.Fatalf("the first call never hit its inotify limit (%v instances, error %q): the test proves nothing", h["n"], h["error"])
	}
	if other["n"] != float64(1) || other["error"] != "" {
		t.Fatalf("a call's inotify_init failed while another call held %v instances: %v", h["n"], other["error"])
	}
}

// Pooled containers each hold a slot of their own: their inits run as different host uids.
func TestUserNSPooledSlots(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, func(c *Config) { c.PoolSize = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Prepare(ctx, probeCall(`{}`)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	p := s.pools[poolKey(probeCall(`{}`))]
	s.mu.Unlock()
	p.lock()
	ready := append([]*ctr(nil), p.ready...)
	p.unlock()
	if len(ready) != 2 {
		t.Fatalf("%d ready containers", len(ready))
	}
	uids := map[uint32]bool{}
	for _, c := range ready {
		pid, err := c.inst.(*lcInstance).proc.Pid()
		if err != nil {
			t.Fatal(err)
		}
		uid := statusUID(t, pid)
		if c.slot == nil || uid != c.slot.uid || uid == 0 {
			t.Fatalf("pooled init pid %d runs as host uid %d, not its slot's", pid, uid)
		}
		uids[uid] = true
	}
	if len(uids) != 2 {
		t.Fatalf("two pooled containers share host uid %v", uids)
	}
	out, err := s.Run(ctx, probeCall(`{"op":"whoami"}`))
	if err != nil {
		t.Fatal(err)
	}
	if base := hostBase(t, decode(t, out)["uid_map"]); !uids[base] {
		t.Fatalf("the pooled call ran as host uid %d, none of the pool's %v", base, uids)
	}
}

// statusUID is the real uid in /proc/PID/status, as the host sees it.
func statusUID(t *testing.T, pid int) uint32 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			f := strings.Fields(v)
			u, _ := strconv.ParseUint(f[0], 10, 32)
			return uint32(u)
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return 0
}

// Slots come back when containers are destroyed: many calls through a few slots all run, and
// when every slot is held a container is refused with ErrBusy, not made to share.
func TestUserNSSlotsReleased(t *testing.T) {
	needContainers(t)
	// Slots of their own, away from other tests' (here and in concurrent test processes).
	offset := 200 + rand.IntN(700)
	s := newSandbox(t, func(c *Config) { c.IDSlots = 3; c.idOffset = offset })
	for i := range 20 {
		out, err := run(t, s, fmt.Sprintf(`{"op":"echo","i":%d}`, i), 20*time.Second)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		decode(t, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.ids.inUse() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots still held after every call's teardown", s.ids.inUse())
		}
		time.Sleep(10 * time.Millisecond)
	}

	one := newSandbox(t, func(c *Config) { c.IDSlots = 1; c.PoolSize = 1; c.idOffset = offset + 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := one.Prepare(ctx, probeCall(`{}`)); err != nil { // the pool holds the only slot
		t.Fatal(err)
	}
	other := probeCall(`{"op":"echo"}`)
	other.Limits.MemoryMB = 100 // another pool key: a cold call
	if _, err := one.Run(ctx, other); !errors.Is(err, isolation.ErrBusy) {
		t.Fatalf("a call with every slot held: err %v, want ErrBusy", err)
	}
}

// shellRuntime builds a busybox runtime root and a Shell tool folder {toolsDir}/name with run.sh.
func shellRuntime(t *testing.T, name, script string) (rt, tool string) {
	t.Helper()
	rt = filepath.Join(t.TempDir(), "rootfs")
	testutil.BusyboxTree(t, rt, "sh", "cat", "sleep", "tr", "sed", "printf")
	tool = filepath.Join(env.toolsDir, name)
	if err := os.MkdirAll(tool, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tool) })
	if err := os.WriteFile(filepath.Join(tool, "run.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	return rt, tool
}

// A mount inside a runtime root (here a bind mount at /extra) is part of the container's root, as
// it was with the runtime's own recursive bind, and the tool reads it.
func TestUserNSRootfsSubmounts(t *testing.T) {
	needContainers(t)
	rt, tool := shellRuntime(t, "submount", `cat /extra/data > /axocoatl/output.json`)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "data"), []byte(`{"from":"submount"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(rt, "extra"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(src, filepath.Join(rt, "extra"), "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(filepath.Join(rt, "extra"), syscall.MNT_DETACH) })
	s := newSandbox(t, func(c *Config) { c.RuntimeRoot = rt })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := s.Run(ctx, sandbox.Call{Tool: "submount", Runtime: isolation.RequireShell, Dir: tool,
		Entrypoint: filepath.Join(tool, "run.sh"), Input: []byte(`{}`), Limits: sandbox.Limits{}.WithDefaults()})
	if err != nil {
		t.Fatal(err)
	}
	if m := decode(t, out); m["from"] != "submount" {
		t.Fatalf("output %s, stderr %q", out.Output, out.Stderr)
	}
}
