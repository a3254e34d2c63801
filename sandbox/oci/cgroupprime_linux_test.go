package oci

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPrimeCgroups checks that priming writes this process into the cgroup it already is in: the
// file is this process's own cgroup.procs (it lists our pid), and /proc/self/cgroup is unchanged
// once the priming write returned.
func TestPrimeCgroups(t *testing.T) {
	f := primeFile()
	if f == "" {
		if os.Geteuid() == 0 {
			t.Fatal("no writable cgroup.procs found for this process as root")
		}
		t.Skip("no cgroup of this process is writable by this user (rootless): priming is off")
	}
	if !strings.HasPrefix(f, "/sys/fs/cgroup/") || !strings.HasSuffix(f, "/cgroup.procs") {
		t.Fatalf("prime file %q is not a cgroup.procs under /sys/fs/cgroup", f)
	}
	pids, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(pids)), strconv.Itoa(os.Getpid())) {
		t.Fatalf("%s does not list this process (%d)", f, os.Getpid())
	}
	before, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	PrimeCgroups()
	deadline := time.Now().Add(10 * time.Second)
	for priming.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the priming write did not return within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	after, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Errorf("priming moved this process:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
