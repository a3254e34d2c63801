package microvm_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/internal/fakenet"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// The microVM tier's NIC, tested as the Oci tier's per-call networks are: the same fake internet
// (package fakenet), the same table of ways out, one VM running them all (boots under TCG take
// 1–2 s each, so the tests boot few).

// netprobeBin builds the netprobe tool once per test binary.
var netprobeBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "axo-netprobe-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "netprobe")
	return bin, fakenet.BuildNetprobe(bin)
})

// netprobeBundle returns a ContainerImage bundle running netprobe (5 MB: on an image drive, not
// through the agent's channel, which a tool folder crosses at UART speed), with an empty
// /etc/resolv.conf for the agent to bind the call's over.
func netprobeBundle(t testing.TB) string {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	if why := callnet.Available(); why != "" {
		t.Skip(why)
	}
	bin, err := netprobeBin()
	if err != nil {
		t.Fatal(err)
	}
	return busyboxBundle(t, "exec /netprobe", 65534, 65534, []string{"PATH=/bin"}, "/", func(rootfs string) {
		b, err := os.ReadFile(bin)
		if err == nil {
			err = os.WriteFile(filepath.Join(rootfs, "netprobe"), b, 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(rootfs, "etc", "resolv.conf"), nil, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
}

func netCall(bundle string, pol egress.Policy, ops ...fakenet.Probe) sandbox.Call {
	in, _ := json.Marshal(map[string]any{"ops": ops})
	c := imageCall(uuid.NewString(), bundle, string(in))
	c.Limits.Timeout, c.Limits.Egress = 60*time.Second, pol
	return c
}

func TestEgressFakeInternet(t *testing.T) {
	netprobeBundle(t)
	fakenet.RunTestInNetns(t, "TestEgressFakeInternetChild")
}

// TestEgressFakeInternetChild: a VM (a snapshot clone) whose tool is allowed **.allowed.test on 80
// and 443 reaches api.allowed.test and nothing else (the table both tiers run); a pooled clone
// with a NIC serves the next call with that call's own policy; a tool without a policy has no way out; after
// Close no link, tap or table is left.
func TestEgressFakeInternetChild(t *testing.T) {
	in, gate := fakenet.StartWithGate(t)
	// With snapshots: every VM of the call's shape is a clone of one taken at READY with its NIC,
	// restored with a new tap in another namespace.
	s := newSandbox(t, microvm.Config{Gate: gate, PoolSize: 1, Snapshots: true})
	bundle := netprobeBundle(t)
	if a := s.Probe(context.Background()); !strings.HasPrefix(a.Network, "a NIC per VM") {
		t.Errorf("Probe network %q", a.Network)
	}
	cases := in.EgressCases()
	in.CheckEgress(t, cases, fakenet.RunProbe(t, s, netCall(bundle, fakenet.Policy(t, fakenet.EgressPatterns...), fakenet.EgressOps(cases)...)), 2500)

	// The call refilled the pool of its shape: VMs with a NIC. The next call, with another
	// policy, is served by the pooled VM under its own policy only.
	waitPool(t, s, 1)
	pooledBefore := s.Stats().Pooled
	res := fakenet.RunProbe(t, s, netCall(bundle, fakenet.Policy(t, "other.test:80"),
		fakenet.Probe{"op": "http", "url": "http://other.test/"}, fakenet.Probe{"op": "http", "url": "http://api.allowed.test/"}))
	if st := s.Stats(); st.Pooled != pooledBefore+1 || st.Cold != 0 {
		t.Errorf("the second call was not served by a pooled clone: %+v", st)
	}
	if !res[0].OK || res[1].OK {
		t.Errorf("pooled VM under other.test:80: other.test %+v, api.allowed.test %+v", res[0], res[1])
	}
	if h := in.Hits(); len(h) != 1 || h["other"] == 0 {
		t.Errorf("canaries %v: want other.test's only (it was allowed)", h)
	}

	// A tool without a policy: a VM without a NIC.
	res = fakenet.RunProbe(t, s, netCall(bundle, egress.Policy{}, fakenet.Probe{"op": "http", "url": "http://api.allowed.test/"},
		fakenet.Probe{"op": "tcp", "addr": fakenet.AllowedIP + ":80"}))
	for _, r := range res {
		if r.OK {
			t.Errorf("a tool without a policy reached the network: %+v", r)
		}
	}

	prefix, table := s.NetNames()
	if prefix == "" {
		t.Fatal("no per-call networks were made")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fakenet.AssertNetGone(t, prefix, table)
}

func TestEgressConcurrentPolicies(t *testing.T) {
	netprobeBundle(t)
	fakenet.RunTestInNetns(t, "TestEgressConcurrentPoliciesChild")
}

// TestEgressConcurrentPoliciesChild: VMs with different policies, two at a time, on namespaces
// recycled between them (at most two exist), each reach what theirs allows and nothing else; no
// link or table is left after Close.
func TestEgressConcurrentPoliciesChild(t *testing.T) {
	in, gate := fakenet.StartWithGate(t)
	s := newSandbox(t, microvm.Config{Gate: gate, NetReady: 1, NetMax: 2})
	bundle := netprobeBundle(t)
	allow, deny := fakenet.Policy(t, "api.allowed.test:80"), fakenet.Policy(t, "other.allowed.test:80")
	const calls = 6
	errs := make(chan string, calls)
	for i := 0; i < calls; i += 2 {
		var wg sync.WaitGroup
		for j, pol := range []egress.Policy{allow, deny} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := fakenet.RunProbe(t, s, netCall(bundle, pol, fakenet.Probe{"op": "http", "url": "http://api.allowed.test/"}))
				if want := j == 0; res[0].OK != want {
					errs <- fmt.Sprintf("call %d (%s): ok=%v err=%q", i+j, pol, res[0].OK, res[0].Err)
				}
			}()
		}
		wg.Wait()
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	st := s.NetStats()
	if st.Recycled == 0 || st.Created > 2 {
		t.Errorf("namespaces %+v: want at most 2 made and some recycled", st)
	}
	prefix, table := s.NetNames()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fakenet.AssertNetGone(t, prefix, table)
	if h := in.Hits(); len(h) != 0 {
		t.Errorf("canaries hit: %v", h)
	}
	t.Logf("%d calls, namespaces %+v", calls, st)
}

// netHelperEnv makes the test binary, re-executed by TestEgressOwnerKilled, a process that keeps
// a pooled VM with a NIC and prints its run dir, link prefix and table, then waits to be killed.
const netHelperEnv = "AXO_VM_NET_HELPER"

func TestEgressOwnerKilledHelper(t *testing.T) {
	root := os.Getenv(netHelperEnv)
	if root == "" {
		t.Skip("only run by TestEgressOwnerKilled")
	}
	gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{qemu.New(qemu.Config{})}, DataDir: testDataDir, RunDir: root,
		PoolSize: 1, Gate: gate})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Prepare(context.Background(), netCall(netprobeBundle(t), fakenet.Policy(t, "api.allowed.test:80"))); err != nil {
		t.Fatal(err)
	}
	waitPool(t, s, 1)
	prefix, table := s.NetNames()
	println("NET READY", s.RunDir(), prefix, table)
	time.Sleep(time.Minute)
}

// TestEgressOwnerKilled: SIGKILL of a process holding a pooled VM with a NIC leaves nothing: the
// VMM dies (its parent-death signal, its keeper), its tap and namespace with it, and the keeper
// removes the table.
func TestEgressOwnerKilled(t *testing.T) {
	netprobeBundle(t)
	root := filepath.Join(runRoot, "netkilled")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	helper := exec.Command(os.Args[0], "-test.run=^TestEgressOwnerKilledHelper$")
	helper.Env = append(os.Environ(), netHelperEnv+"="+root)
	errOut, err := helper.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = helper.Process.Kill(); _ = helper.Wait() }()
	var dir, prefix, table string
	sc := bufio.NewScanner(errOut)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 5 && f[0] == "NET" && f[1] == "READY" {
			dir, prefix, table = f[2], f[3], f[4]
			break
		}
		t.Log(sc.Text())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if dir == "" {
		t.Fatal("the helper did not get ready")
	}
	if len(testutil.QemuPIDs(dir)) != 1 || len(fakenet.LinksWith(prefix)) == 0 {
		t.Fatalf("the helper runs %d qemu and links %v", len(testutil.QemuPIDs(dir)), fakenet.LinksWith(prefix))
	}
	_ = helper.Process.Signal(syscall.SIGKILL)
	_ = helper.Wait()
	for deadline := time.Now().Add(10 * time.Second); len(testutil.QemuPIDs(dir)) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(testutil.QemuPIDs(dir)); n != 0 {
		t.Fatalf("%d qemu still run", n)
	}
	fakenet.AssertNetGone(t, prefix, table)
}

// BenchmarkEgressCall: the same shell tool without and with a network policy, interleaved in one
// run (alternating which goes first): from pools (a VM with a NIC is another shape, pooled with
// its namespace; binding the policy and configuring the guest's NIC are what the policy adds at
// claim time) and cold (a boot with the NIC, its namespace from callnet's pool).
//
//	go test -run '^$' -bench EgressCall -benchtime 10x ./sandbox/microvm/
func BenchmarkEgressCall(b *testing.B) {
	for _, mode := range []string{"pooled", "cold"} {
		b.Run(mode, func(b *testing.B) {
			if why := callnet.Available(); why != "" {
				b.Skip(why)
			}
			gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
			if err != nil {
				b.Fatal(err)
			}
			opts := microvm.Config{Gate: gate}
			if mode == "pooled" {
				opts.PoolSize, opts.Snapshots = 1, true
			}
			s := newSandbox(b, opts)
			dir, entry := tool(b, benchShell.file, benchShell.content, 0o644)
			none := call("bench", benchShell.req, dir, entry, `{}`, 20*time.Second)
			pol := none
			pol.Limits.Egress = fakenet.Policy(b, "api.allowed.test:443")
			ctx := context.Background()
			for _, c := range []sandbox.Call{none, pol} { // warm up; take the snapshots
				if _, err := s.Run(ctx, c); err != nil {
					b.Fatal(err)
				}
			}
			var dn, dp []time.Duration
			for i := 0; b.Loop(); i++ {
				order := []struct {
					c sandbox.Call
					d *[]time.Duration
				}{{none, &dn}, {pol, &dp}}
				if i%2 == 1 {
					order[0], order[1] = order[1], order[0]
				}
				for _, o := range order {
					if mode == "pooled" {
						b.StopTimer()
						waitPools(b, s, 2)
						time.Sleep(300 * time.Millisecond) // let the clones settle to idle
						b.StartTimer()
					}
					t0 := time.Now()
					out, err := s.Run(ctx, o.c)
					*o.d = append(*o.d, time.Since(t0))
					if err != nil || !strings.Contains(string(out.Output), "ok") {
						b.Fatalf("Run: %v %q", err, out.Output)
					}
				}
			}
			b.ReportMetric(float64(median(dn).Microseconds())/1000, "none-p50-ms")
			b.ReportMetric(float64(median(dp).Microseconds())/1000, "policy-p50-ms")
			b.ReportMetric(float64((median(dp)-median(dn)).Microseconds())/1000, "added-p50-ms")
			b.Logf("stats %+v", s.Stats())
		})
	}
}

// waitPools waits until n pools each hold a ready VM.
func waitPools(t testing.TB, s *microvm.Sandbox, n int) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ready := 0
		for _, p := range s.PoolStats() {
			if p.Ready > 0 {
				ready++
			}
		}
		if ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pools never held a ready VM: %+v", n, s.PoolStats())
		}
	}
}
