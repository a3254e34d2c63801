package oci

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/internal/fakenet"
	"github.com/axocoatl/isolation/sandbox"
)

const netHelperEnv = "AXO_OCI_NET_HELPER"

// buildNetprobe builds the network probe tool into a bundle "netprobe" (with an empty
// /etc/resolv.conf to mount the gate's resolver over) under env.toolsDir, once.
var netprobeOnce struct {
	sync.Once
	err error
}

func needNetprobe(t testing.TB) {
	t.Helper()
	needContainers(t)
	if why := callnet.Available(); why != "" {
		t.Skip(why)
	}
	netprobeOnce.Do(func() {
		bin := filepath.Join(filepath.Dir(env.toolsDir), "netprobe")
		if netprobeOnce.err = fakenet.BuildNetprobe(bin); netprobeOnce.err != nil {
			return
		}
		if err := makeBundle(env.toolsDir, "netprobe", bin); err != nil {
			netprobeOnce.err = err
			return
		}
		netprobeOnce.err = os.WriteFile(filepath.Join(env.toolsDir, "netprobe", "rootfs", "etc", "resolv.conf"), nil, 0o644)
	})
	if netprobeOnce.err != nil {
		t.Fatal(netprobeOnce.err)
	}
}

// runInNetns runs the test named child in a fresh network namespace (see fakenet) and fails with
// its output if it fails.
func runInNetns(t *testing.T, child string) {
	t.Helper()
	needNetprobe(t)
	fakenet.RunTestInNetns(t, child, netHelperEnv+"=1", "AXO_OCI_TOOLS="+env.toolsDir)
}

type probeOp = fakenet.Probe

func netCall(pol egress.Policy, ops ...probeOp) sandbox.Call {
	in, _ := json.Marshal(map[string]any{"ops": ops})
	return sandbox.Call{ID: uuid.NewString(), Tool: "netprobe", Runtime: isolation.RequireContainerImage,
		Dir: filepath.Join(env.toolsDir, "netprobe"), Input: in,
		Limits: sandbox.Limits{Timeout: 30 * time.Second, Egress: pol}.WithDefaults()}
}

// fakeInternet starts the fake internet and its gate (fakenet.StartWithGate). Only in a child of
// runInNetns.
func fakeInternet(t *testing.T) (*fakenet.Internet, *egress.Gate) {
	t.Helper()
	if os.Getenv(netHelperEnv) == "" {
		t.Skip("only run in a network namespace of its own, by its parent test")
	}
	return fakenet.StartWithGate(t)
}

func TestEgressFakeInternet(t *testing.T) { runInNetns(t, "TestEgressFakeInternetChild") }

// TestEgressFakeInternetChild: a tool allowed **.allowed.test on 80 and 443 reaches
// api.allowed.test over HTTP and TLS and nothing else: every other way out is refused, fast, and
// the canaries and the DNS server see nothing of it.
func TestEgressFakeInternetChild(t *testing.T) {
	in, gate := fakeInternet(t)
	s := newSandbox(t, func(c *Config) { c.Gate = gate; c.PoolSize = -1 })
	pol := fakenet.Policy(t, fakenet.EgressPatterns...)
	cases := in.EgressCases()
	in.CheckEgress(t, cases, fakenet.RunProbe(t, s, netCall(pol, fakenet.EgressOps(cases)...)), 2500)

	// The runtime binaries join the same namespaces.
	for _, be := range []string{BackendCrun, BackendRunc} {
		if _, err := exec.LookPath(be); err != nil {
			t.Logf("%s: not installed", be)
			continue
		}
		t.Run(be, func(t *testing.T) {
			s := newSandbox(t, func(c *Config) { c.Gate = gate; c.Backend = be })
			if be == BackendRunc {
				if _, err := s.Run(context.Background(), netCall(pol)); !errors.Is(err, isolation.ErrTierUnavailable) || !strings.Contains(err.Error(), "runc") {
					t.Fatalf("runc: %v, want tier unavailable naming runc", err)
				}
				return
			}
			res := fakenet.RunProbe(t, s, netCall(pol, probeOp{"op": "http", "url": "http://api.allowed.test/"},
				probeOp{"op": "http", "url": "http://" + fakenet.OtherIP + "/"}, probeOp{"op": "udp", "addr": fakenet.AllowedIP + ":443"}))
			if !res[0].OK || res[1].OK || res[2].OK {
				t.Errorf("%s: allowed %+v, bare IP %+v, udp %+v", be, res[0], res[1], res[2])
			}
		})
	}
	if h := in.Hits(); len(h) != 0 {
		t.Errorf("canaries hit: %v", h)
	}

	// A tool without a policy has loopback only, in the same sandbox.
	res := fakenet.RunProbe(t, s, netCall(egress.Policy{}, probeOp{"op": "http", "url": "http://api.allowed.test/"}, probeOp{"op": "tcp", "addr": fakenet.AllowedIP + ":80"}))
	for _, r := range res {
		if r.OK {
			t.Errorf("a tool without a policy reached the network: %+v", r)
		}
	}
}

// TestEgressConcurrentPolicies: calls with different policies at once, on namespaces recycled
// between them, each reach what theirs allows and nothing else; after many calls and Close,
// nothing is left (no namespace pair, no table, no resolv.conf).
func TestEgressConcurrentPolicies(t *testing.T) { runInNetns(t, "TestEgressConcurrentPoliciesChild") }

func TestEgressConcurrentPoliciesChild(t *testing.T) {
	in, gate := fakeInternet(t)
	cfg := Config{StateRoot: t.TempDir(), BundleRoot: env.toolsDir, CgroupParent: "axocoatl-test-" + uuid.NewString()[:8],
		NoSeccomp: noSeccomp(), PoolIdle: time.Minute, Gate: gate, NetReady: 1, NetMax: 8}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	allow := fakenet.Policy(t, "api.allowed.test:80")
	deny := fakenet.Policy(t, "other.allowed.test:80")
	calls := 24
	if n := os.Getenv("AXO_OCI_NET_CALLS"); n != "" {
		fmt.Sscan(n, &calls)
	}
	// Warm pools for both policies (pooled calls) and cold calls with both, interleaved.
	if err := s.Prepare(context.Background(), netCall(allow)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan string, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pol, want := allow, true
			if i%2 == 1 {
				pol, want = deny, false
			}
			call := netCall(pol, probeOp{"op": "http", "url": "http://api.allowed.test/"})
			if i%3 == 2 {
				call.Limits.MemoryMB = 200 // another pool key: a cold call
			}
			res := fakenet.RunProbe(t, s, call)
			if res[0].OK != want {
				errs <- fmt.Sprintf("call %d (%s): ok=%v err=%q", i, pol, res[0].OK, res[0].Err)
			}
		}()
		if i%2 == 1 {
			wg.Wait() // two at a time: the machine is shared
		}
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	st := s.net.Made().Stats()
	if st.Recycled == 0 {
		t.Errorf("no namespace was recycled: %+v", st)
	}
	prefix, table := s.net.Made().LinkPrefix(), s.net.Made().Table()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, cfg)
	assertNetGone(t, prefix, table, cfg.StateRoot)
	if h := in.Hits(); len(h) != 0 {
		t.Errorf("canaries hit: %v", h)
	}
	t.Logf("%d calls, namespaces: %+v", calls, st)
}

// assertNetGone fails if a link of the pool, its table or its resolv.conf files remain.
func assertNetGone(t testing.TB, prefix, table, stateRoot string) {
	t.Helper()
	fakenet.AssertNetGone(t, prefix, table)
	if ents, _ := os.ReadDir(filepath.Join(stateRoot, netDir)); len(ents) != 0 {
		t.Fatalf("resolv.conf dirs left: %v", ents)
	}
}

// TestEgressReapAfterKill: a daemon SIGKILLed with pooled containers in per-call namespaces and a
// call running in one leaves nothing: its keeper removes the containers (their namespaces and
// veth pairs go with them) and the table; when the keeper is killed too, the next start's reap
// removes the table.
func TestEgressReapAfterKill(t *testing.T) { runInNetns(t, "TestEgressReapAfterKillChild") }

func TestEgressReapAfterKillChild(t *testing.T) {
	if os.Getenv(netHelperEnv) == "" || os.Getenv("AXO_OCI_NET_CRASH") != "" {
		t.Skip("only run in a network namespace of its own, by its parent test")
	}
	for _, keeperToo := range []bool{false, true} {
		t.Run(fmt.Sprintf("keeper killed too=%v", keeperToo), func(t *testing.T) {
			root := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestEgressCrashHelper$", "-test.v")
			cmd.Env = append(os.Environ(), "AXO_OCI_NET_CRASH="+root)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			var prefix, table string
			var keeper int
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if _, err := fmt.Sscanf(sc.Text(), "NET READY %s %s %d", &prefix, &table, &keeper); err == nil {
					break
				}
			}
			if prefix == "" {
				t.Fatal("the helper did not get ready")
			}
			if n := len(fakenet.LinksWith(prefix)); n < 3 {
				t.Fatalf("%d links of the helper, want 3 or more (two pooled, one running)", n)
			}
			if keeperToo {
				// Stopped first: a live owner replaces a keeper that dies, and the replacement
				// reaped the table (seen under load: "the table is gone already").
				_ = cmd.Process.Signal(syscall.SIGSTOP)
				_ = syscall.Kill(keeper, syscall.SIGKILL)
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			if keeperToo {
				time.Sleep(200 * time.Millisecond)
				if out, err := exec.Command("nft", "list", "table", "inet", table).CombinedOutput(); err != nil {
					t.Fatalf("with the keeper dead, the table is gone already: %v %s", err, out)
				}
				ReapDead(Config{StateRoot: root})
			}
			// The keeper needs a moment to see its owner gone.
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if exec.Command("nft", "list", "table", "inet", table).Run() != nil && len(fakenet.LinksWith(prefix)) == 0 {
					break
				}
			}
			assertNetGone(t, prefix, table, root)
		})
	}
}

// TestEgressCrashHelper owns a sandbox with two pooled containers of a tool with a policy and a
// call of it running, then waits to be killed.
func TestEgressCrashHelper(t *testing.T) {
	root := os.Getenv("AXO_OCI_NET_CRASH")
	if root == "" {
		t.Skip("only run by TestEgressReapAfterKillChild")
	}
	gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{StateRoot: root, BundleRoot: env.toolsDir, CgroupParent: "axocoatl-test-" + uuid.NewString()[:8],
		NoSeccomp: noSeccomp(), PoolSize: 2, Gate: gate, NetReady: 1})
	if err != nil {
		t.Fatal(err)
	}
	pol := fakenet.Policy(t, "api.allowed.test:80")
	if err := s.Prepare(context.Background(), netCall(pol)); err != nil {
		t.Fatal(err)
	}
	call := netCall(pol, probeOp{"op": "sleep", "ms": "60000"})
	call.Limits.MemoryMB = 200 // not the pool's: a cold call
	go func() { _, _ = s.Run(context.Background(), call) }()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := s.net.Made().Stats()
		if ps := s.PoolStats(); len(ps) == 1 && ps[0].Ready == 2 && st.InUse >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not fill: %+v", s.net.Made().Stats())
		}
	}
	time.Sleep(300 * time.Millisecond) // the call's container starts
	fmt.Printf("NET READY %s %s %d\n", s.net.Made().LinkPrefix(), s.net.Made().Table(), s.owner.keep.PID())
	time.Sleep(time.Minute)
}

// A tool with a network policy is refused, saying why, where the tier cannot enforce it (no gate,
// or rootless); Probe says so too. Tools without one are unaffected.
func TestEgressRefusedWithoutNetworks(t *testing.T) {
	needNetprobe(t)
	s := newSandbox(t, nil) // no gate
	_, err := s.Run(context.Background(), netCall(fakenet.Policy(t, "api.allowed.test:443")))
	if !errors.Is(err, isolation.ErrTierUnavailable) || !strings.Contains(err.Error(), "network policy") {
		t.Fatalf("err %v, want tier unavailable naming the network policy", err)
	}
	if err := s.Prepare(context.Background(), netCall(fakenet.Policy(t, "api.allowed.test:443"))); !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Fatalf("Prepare: %v", err)
	}
	if a := s.Probe(context.Background()); !strings.HasPrefix(a.Network, "unavailable: no egress gate") {
		t.Fatalf("Probe network %q", a.Network)
	}
	if _, err := s.Run(context.Background(), netCall(egress.Policy{})); err != nil {
		t.Fatalf("a tool without a policy: %v", err)
	}
	rootless := &Sandbox{rootless: true, cfg: Config{Gate: &egress.Gate{}}}
	if why := rootless.netUnavailable(); !strings.Contains(why, "need root") {
		t.Fatalf("rootless: %q", why)
	}
}

// BenchmarkEgressWarmCall: a warm-pool call of the same tool without and with a network policy
// (its container in a per-call namespace, the policy bound in the gate for the call). Both in
// one run, interleaved per iteration, alternating which goes first.
func BenchmarkEgressWarmCall(b *testing.B) {
	needNetprobe(b)
	gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
	if err != nil {
		b.Fatal(err)
	}
	s := newSandbox(b, func(c *Config) { c.Gate = gate; c.PoolSize = 1 })
	ctx := context.Background()
	none, pol := netCall(egress.Policy{}), netCall(fakenet.Policy(b, "api.allowed.test:443"))
	var dn, dp []time.Duration
	type kind struct {
		call sandbox.Call
		d    *[]time.Duration
	}
	for i := 0; b.Loop(); i++ {
		order := []kind{{none, &dn}, {pol, &dp}}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0] // neither always runs first
		}
		for _, c := range order {
			b.StopTimer()
			if err := s.Prepare(ctx, c.call); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			c.call.ID = uuid.NewString()
			t0 := time.Now()
			out, err := s.Run(ctx, c.call)
			*c.d = append(*c.d, time.Since(t0))
			if err != nil || out.ExitCode != 0 {
				b.Fatal(err, out.Stderr)
			}
		}
	}
	slices.Sort(dn)
	slices.Sort(dp)
	b.ReportMetric(ms(dn[len(dn)/2]), "none-p50-ms")
	b.ReportMetric(ms(dp[len(dp)/2]), "policy-p50-ms")
	b.ReportMetric(ms(dp[len(dp)/2]-dn[len(dn)/2]), "added-p50-ms")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
