package microvm_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// procStatus reads the fields of /proc/pid/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// memoryLimit is the memory limit of pid's cgroup and that cgroup's path (v1 or v2).
func memoryLimit(t *testing.T, pid int) (int64, string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var file string
		switch {
		case strings.Contains(","+parts[1]+",", ",memory,"):
			file = filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes")
		case parts[0] == "0" && parts[1] == "" && fileExists("/sys/fs/cgroup/cgroup.controllers"):
			file = filepath.Join("/sys/fs/cgroup", parts[2], "memory.max")
		default:
			continue
		}
		v, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
		return n, parts[2]
	}
	t.Fatalf("pid %d has no memory cgroup: %s", pid, b)
	return 0, ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Each QEMU runs as an unprivileged uid of its own, with no capabilities, under QEMU's seccomp
// filter, in a cgroup of its own whose memory limit is guest RAM plus the VMM's margin; pooled
// VMs and snapshot restores (which pass the migration stream by descriptor) still serve calls.
func TestVMMRunsWithLeastPrivilege(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1, Snapshots: true})
	dir, entry := tool(t, "main.sh", shEcho, 0o644)
	c := call("priv", isolation.RequireShell, dir, entry, `{"k":2}`, 30*time.Second)
	if err := s.Prepare(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	waitPool(t, s, 1)
	pids := testutil.QemuPIDs(s.RunDir())
	if len(pids) != 1 {
		t.Fatalf("want one pooled qemu, found %v", pids)
	}
	st := procStatus(t, pids[0])
	uids := strings.Fields(st["Uid"])
	if len(uids) != 4 || uids[0] == "0" || uids[1] == "0" || uids[2] == "0" || uids[3] == "0" {
		t.Errorf("QEMU runs with uids %q, want no 0", st["Uid"])
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapAmb"} {
		if st[k] != "0000000000000000" {
			t.Errorf("QEMU %s = %s, want none", k, st[k])
		}
	}
	if st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
		t.Errorf("QEMU Seccomp %q NoNewPrivs %q, want its -sandbox filter (2, 1)", st["Seccomp"], st["NoNewPrivs"])
	}
	limit, cg := memoryLimit(t, pids[0])
	want := int64(microvm.DefaultMemoryMB+qemu.DefaultTCGOverheadMB) << 20
	if !strings.Contains(cg, "/axocoatl-vm-") || limit != want {
		t.Errorf("QEMU's memory cgroup %s has limit %d, want its own (axocoatl-vm-...) with %d", cg, limit, want)
	}
	for i := 0; i < 2; i++ { // pooled, then restored from the snapshot or pooled again
		o, err := s.Run(context.Background(), c)
		if err != nil || !strings.Contains(string(o.Output), `"got":{"k":2}`) {
			t.Fatalf("call %d: outcome %+v, err %v", i, o, err)
		}
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", cg)); err == nil && !fileExists("/sys/fs/cgroup/cgroup.controllers") {
		// The pooled VM served a call and was destroyed: its cgroup goes with it.
		deadline := time.Now().Add(5 * time.Second)
		for fileExists(filepath.Join("/sys/fs/cgroup/memory", cg)) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if fileExists(filepath.Join("/sys/fs/cgroup/memory", cg)) {
			t.Errorf("cgroup %s outlived its VM", cg)
		}
	}
	t.Logf("QEMU uid %s, cgroup %s, memory limit %d MiB", uids[0], cg, limit>>20)
}
