package firecracker

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// TestDriverNetworkInterface: a VM with a NIC (BootSpec.Net) is started by the jailer inside the
// call's namespace (--netns), where its tap exists already, owned by the jailed uid, and gets it
// through PUT /network-interfaces/eth0 (host_dev_name tap0, the fixed guest MAC), which the
// spec-checked fake accepts only if it finds the tap in its own namespace; a restore opens the
// snapshot's tap in another call's namespace. Without a jailer the driver says it cannot.
func TestDriverNetworkInterface(t *testing.T) {
	if why := callnet.Available(); why != "" {
		t.Skip(why)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := callnet.New(callnet.Config{Table: callnet.TablePrefix + "fctest-" + strconv.Itoa(os.Getpid()),
		RunDir: t.TempDir(), Gate: gate, Ready: 1, Max: 4, ForVMs: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx := testCtx(t)
	nsA, err := pool.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Put(nsA)

	kernel, initrd, root := guestFiles(t)
	plain := New(Config{Binary: fakeBinary(t, "firecracker")})
	if why := plain.SupportsNIC(); !strings.Contains(why, "jailer") {
		t.Errorf("SupportsNIC without a jailer: %q", why)
	}
	if _, err := plain.Boot(ctx, microvm.BootSpec{ID: "net-plain", RunDir: shortTempDir(t), Kernel: kernel, Initrd: initrd,
		VCPUs: 1, MemoryMB: 128, Net: nsA}); err == nil || !strings.Contains(err.Error(), "jailer") {
		t.Fatalf("Boot with a NIC and no jailer: %v", err)
	}

	fc := fakeBinary(t, "firecracker")
	base := shortTempDir(t)
	const jailID = 0x71010000
	d := New(Config{Jailer: &Jailer{Binary: fakeBinary(t, "jailer"), ExecFile: fc, UID: jailID, GID: jailID, ChrootBaseDir: base}})
	if why := d.SupportsNIC(); why != "" {
		t.Fatalf("SupportsNIC with a jailer: %q", why)
	}
	var out syncBuffer
	m, err := d.Boot(ctx, microvm.BootSpec{ID: "net-a", RunDir: shortTempDir(t), Kernel: kernel, Initrd: initrd, RootDrive: root,
		VCPUs: 1, MemoryMB: 128, Stderr: &out, Net: nsA})
	if err != nil {
		t.Fatalf("Boot: %v\n%s", err, out.String())
	}
	defer m.Kill()
	args, _ := os.ReadFile(base + "/args-net-a")
	if !strings.Contains(string(args), "--netns\n"+nsA.Path()) {
		t.Errorf("jailer args lack --netns %s:\n%s", nsA.Path(), args)
	}
	_, bodies := fakeRequests(out.String())
	joined := strings.Join(bodies, "\n")
	for _, w := range []string{`"iface_id":"eth0"`, `"host_dev_name":"tap0"`, `"guest_mac":"` + microvm.GuestMAC + `"`} {
		if !strings.Contains(joined, w) {
			t.Errorf("requests lack %s:\n%s", w, joined)
		}
	}
	owner, err := os.ReadFile("/proc/" + strconv.Itoa(m.PID()) + "/net/dev")
	if err != nil || !strings.Contains(string(owner), callnet.TapName+":") {
		t.Errorf("the VMM's namespace has no %s: %v\n%s", callnet.TapName, err, owner)
	}

	snap, err := d.Snapshot(ctx, m, shortTempDir(t))
	if err != nil {
		t.Fatalf("Snapshot: %v\n%s", err, out.String())
	}
	m.Kill()
	nsB, err := pool.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Put(nsB)
	var outB syncBuffer
	m2, err := d.Restore(ctx, snap, microvm.BootSpec{ID: "net-b", RunDir: shortTempDir(t), RootDrive: root, VCPUs: 1, MemoryMB: 128, Stderr: &outB, Net: nsB})
	if err != nil {
		t.Fatalf("Restore: %v\n%s", err, outB.String())
	}
	m2.Kill()
	if s := out.String() + outB.String(); strings.Contains(s, "VIOLATION") {
		t.Fatalf("spec violations:\n%s", s)
	}
	// A restore into a namespace without the tap fails as Firecracker's would.
	if _, err := d.Restore(context.Background(), snap, microvm.BootSpec{ID: "net-c", RunDir: shortTempDir(t), RootDrive: root, VCPUs: 1, MemoryMB: 128}); err == nil {
		t.Errorf("a snapshot with a NIC restored without a namespace")
	}
}
