package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet"
	"github.com/axocoatl/isolation/fleet/internal/wire"
)

func embedded(t testing.TB) *fleet.Embedded {
	t.Helper()
	e, err := fleet.StartEmbedded(fleet.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func conn(t testing.TB, e *fleet.Embedded, name string) *nats.Conn {
	t.Helper()
	nc, err := e.Connect(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newGateway(t testing.TB, nc *nats.Conn, cfg fleet.GatewayConfig) *fleet.Gateway {
	t.Helper()
	cfg.Conn = nc
	g, err := fleet.NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// TestRoutingAndFallback: the ideal tier's worker runs the call; with no worker of that tier
// the next tier of the fallback order runs it, reported as a downgrade; strict refuses it; a
// tier no worker runs at all is tier_unavailable.
func TestRoutingAndFallback(t *testing.T) {
	root := toolsRoot(t)
	e := embedded(t)
	vmWorker := startWorker(t, conn(t, e, "a"), fakeExecutor(t, root, "vm", "", isolation.TierMicroVM, isolation.TierWasm), 4)
	startWorker(t, conn(t, e, "b"), fakeExecutor(t, root, "oci", "", isolation.TierOCI), 4)
	g := newGateway(t, conn(t, e, "gw"), fleet.GatewayConfig{})
	gw := gatewayExec(t, root, g, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	r, err := call(ctx, gw, "py", `{"ms":1}`)
	if err != nil {
		t.Fatal(err)
	}
	if r.Tier != isolation.TierMicroVM || r.Degraded || outputWorker(t, r) != "vm" {
		t.Fatalf("py ran in %s (degraded %v) on %s, want Firecracker on vm", r.Tier, r.Degraded, outputWorker(t, r))
	}
	// A tool name with a '.' travels as '~' in its subject token.
	if r, err := call(ctx, gw, "any.tool", `{}`); err != nil || r.Tier != isolation.TierMicroVM {
		t.Fatalf("any.tool: %v %v", r, err)
	}
	// WithTier forces Oci: no fallback, and a weaker tier than the ideal is a downgrade.
	if r, err := call(ctx, gw, "py", `{}`, executor.WithTier(isolation.TierOCI)); err != nil || r.Tier != isolation.TierOCI || !r.Degraded {
		t.Fatalf("forced Oci: %+v %v", r, err)
	}

	vmWorker.Close()
	r, err = call(ctx, gw, "py", `{"ms":1}`)
	if err != nil {
		t.Fatal(err)
	}
	if r.Tier != isolation.TierOCI || !r.Degraded || r.Ideal != isolation.TierMicroVM || outputWorker(t, r) != "oci" {
		t.Fatalf("after the vm worker left: %s degraded=%v ideal=%s on %s, want a degraded Oci call", r.Tier, r.Degraded, r.Ideal, outputWorker(t, r))
	}
	_, err = call(ctx, gw, "py", `{}`, executor.WithStrict())
	if !errors.Is(err, isolation.ErrDowngradeRefused) {
		t.Fatalf("strict: %v, want downgrade refused", err)
	}
	strictGW := gatewayExec(t, root, g, true)
	if _, err := call(ctx, strictGW, "py", `{}`); !errors.Is(err, isolation.ErrDowngradeRefused) {
		t.Fatalf("strict executor: %v, want downgrade refused", err)
	}
	if _, err := call(ctx, gw, "py", `{}`, executor.WithTier(isolation.TierWasm)); !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Fatalf("py in Wasmtime: %v, want tier unavailable", err)
	}
	// The gateway's tier view comes from the workers' service stats.
	if a := gw.Availability(ctx, isolation.TierOCI); !a.Available {
		t.Errorf("Oci: %+v, want available (the oci worker runs it)", a)
	}
}

// TestBusyIsNotAFallback: a saturated tier answers busy (429), never a weaker tier.
func TestBusyIsNotAFallback(t *testing.T) {
	root := toolsRoot(t)
	e := embedded(t)
	startWorker(t, conn(t, e, "a"), fakeExecutor(t, root, "vm", "", isolation.TierMicroVM), 1)
	startWorker(t, conn(t, e, "b"), fakeExecutor(t, root, "oci", "", isolation.TierOCI), 4)
	gw := gatewayExec(t, root, newGateway(t, conn(t, e, "gw"), fleet.GatewayConfig{}), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	started := make(chan error, 1)
	go func() { _, err := call(ctx, gw, "py", `{"ms":1500}`); started <- err }()
	time.Sleep(300 * time.Millisecond) // the first call holds the only Firecracker slot
	_, err := call(ctx, gw, "py", `{"ms":1}`)
	if !errors.Is(err, isolation.ErrBusy) || isolation.OutcomeOf(err).HTTPStatus != 429 {
		t.Fatalf("second call: %v, want busy (429), not a downgrade to Oci", err)
	}
	if err := <-started; err != nil {
		t.Fatalf("first call: %v", err)
	}
}

// TestCancelReachesTheWorker: a call whose caller gives up is cancelled where it runs.
func TestCancelReachesTheWorker(t *testing.T) {
	root, marksDir := toolsRoot(t), t.TempDir()
	e := embedded(t)
	startWorker(t, conn(t, e, "a"), fakeExecutor(t, root, "vm", marksDir, isolation.TierMicroVM), 2)
	gw := gatewayExec(t, root, newGateway(t, conn(t, e, "gw"), fleet.GatewayConfig{}), false)
	// A cancellation (not a deadline, which the worker also knows from the request): only the
	// cancel subject can tell the worker.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(400*time.Millisecond, cancel)
	_, err := call(ctx, gw, "py", `{"ms":20000,"mark":"c"}`)
	if isolation.KindName(err) != isolation.KindCanceled {
		t.Fatalf("err %v, want canceled", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(marksDir + "/c.cancelled"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker's tool was not cancelled within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := marks(t, marksDir, "c"); n != 1 {
		t.Fatalf("the tool started %d times, want 1", n)
	}
}

// TestWorkerKilled: kill -9 of the worker process running a 2 s call. The client gets worker
// lost (not a re-run: the side-effect counter says the tool started once), new calls go to the
// live worker; an idempotent tool is run again elsewhere instead.
func TestWorkerKilled(t *testing.T) {
	root, marksDir := toolsRoot(t), t.TempDir()
	s := natsServer(t)
	url := s.ClientURL()
	p1 := spawnWorker(t, workerSpec{URL: url, Root: root, Name: "w1", MarkDir: marksDir, Tiers: []string{"Oci"}, Slots: 4})
	p2 := spawnWorker(t, workerSpec{URL: url, Root: root, Name: "w2", MarkDir: marksDir, Tiers: []string{"Oci"}, Slots: 4})
	procs := map[string]*proc{"w1": p1, "w2": p2}
	gw := gatewayExec(t, root, newGateway(t, connect(t, url), fleet.GatewayConfig{}), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, c := range []struct {
		tool     string
		wantRuns int
	}{{"py", 1}, {"py-idem", 2}} {
		mark := "m-" + c.tool
		type res struct {
			r   *executor.Result
			err error
		}
		done := make(chan res, 1)
		go func() {
			r, err := call(ctx, gw, c.tool, `{"ms":2000,"mark":"`+mark+`"}`)
			done <- res{r, err}
		}()
		var victim string
		for victim == "" {
			b, _ := os.ReadFile(marksDir + "/" + mark)
			if len(b) > 0 {
				victim = string(b[:2])
			}
			time.Sleep(5 * time.Millisecond)
		}
		killed := time.Now()
		if err := procs[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		r := <-done
		lostAfter := time.Since(killed)
		runs := marks(t, marksDir, mark)
		if runs != c.wantRuns {
			t.Errorf("%s: the tool started %d times, want %d", c.tool, runs, c.wantRuns)
		}
		if c.wantRuns == 1 {
			if !errors.Is(r.err, isolation.ErrWorkerLost) || isolation.OutcomeOf(r.err).HTTPStatus != 502 {
				t.Fatalf("%s: %v, want worker lost (502)", c.tool, r.err)
			}
			// The spec is 2 s; a loaded machine gets slack here (the figure is a benchmark's).
			if lostAfter > 5*time.Second {
				t.Errorf("worker lost reported %s after the kill", lostAfter)
			}
		} else if r.err != nil || outputWorker(t, r.r) == victim {
			t.Fatalf("%s: %+v %v, want a result from the other worker", c.tool, r.r, r.err)
		}
		// New calls avoid the dead worker.
		for i := 0; i < 5; i++ {
			r, err := call(ctx, gw, "py", `{"ms":1}`)
			if err != nil || outputWorker(t, r) == victim {
				t.Fatalf("new call after the kill: %+v %v", r, err)
			}
		}
		// Respawn the victim for the next case.
		delete(procs, victim)
		procs[victim] = spawnWorker(t, workerSpec{URL: url, Root: root, Name: victim, MarkDir: marksDir, Tiers: []string{"Oci"}, Slots: 4})
	}
}

// TestConcurrentCallsAgainstFewSlots: 200 concurrent calls against 2 slots per worker: every
// call ends with its result or busy (429); none is lost or run twice.
func TestConcurrentCallsAgainstFewSlots(t *testing.T) {
	root, marksDir := toolsRoot(t), t.TempDir()
	e := embedded(t)
	for _, n := range []string{"a", "b", "c"} {
		startWorker(t, conn(t, e, n), fakeExecutor(t, root, n, marksDir, isolation.TierOCI), 2)
	}
	gw := gatewayExec(t, root, newGateway(t, conn(t, e, "gw"), fleet.GatewayConfig{}), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kinds := concurrentOutcomes(ctx, gw, 200, "py", `{"ms":50,"mark":"n"}`, executor.WithTier(isolation.TierOCI))
	if kinds["ok"]+kinds["busy"] != 200 || kinds["busy"] == 0 || kinds["ok"] < 6 {
		t.Fatalf("outcomes %v: want only ok and busy, some of each", kinds)
	}
	if n := marks(t, marksDir, "n"); n != kinds["ok"] {
		t.Fatalf("%d tool runs for %d successful calls", n, kinds["ok"])
	}
	t.Logf("200 calls, 3 workers × 2 slots: %v", kinds)
}

// TestRetryAvoidsSilentWorker: a worker that accepted calls goes silent (SIGSTOP: its
// connection stays up, so the servers keep routing to it). A call the queue group hands to it
// is not accepted, and its retries go directly to another worker — not again to the silent one,
// which was the worker that had accepted a call most recently.
func TestRetryAvoidsSilentWorker(t *testing.T) {
	root := toolsRoot(t)
	url := natsServer(t).ClientURL()
	procs := map[string]*proc{}
	for _, n := range []string{"w1", "w2"} {
		procs[n] = spawnWorker(t, workerSpec{URL: url, Root: root, Name: n, Tiers: []string{"Oci"}, Slots: 4})
	}
	g := newGateway(t, connect(t, url), fleet.GatewayConfig{})
	gw := gatewayExec(t, root, g, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := call(ctx, gw, "py", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	victim := outputWorker(t, r)
	// The gateway's view of the fleet (kept 2 s) lists both workers, as it would when a worker
	// dies between two discoveries.
	g.Availability(ctx, isolation.TierOCI)
	viewAt := time.Now()
	if err := procs[victim].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer procs[victim].cmd.Process.Signal(syscall.SIGCONT)
	for i := 0; i < 10 && time.Since(viewAt) < 1500*time.Millisecond; i++ {
		r, err := call(ctx, gw, "py", `{}`)
		if err != nil || outputWorker(t, r) == victim {
			t.Fatalf("call %d with %s stopped: %+v %v", i, victim, r, err)
		}
	}
}

// TestAcceptedBeforeEveryStart: on the wire, a worker answers every call it starts with
// "accepted" first, even one that ends at once (holding "accepted" back for fast calls made a
// worker killed in that instant look as if it never started the call, which then ran again
// elsewhere), then heartbeats while it runs, then "done"; a request past its Accept-By gets no
// answer at all.
func TestAcceptedBeforeEveryStart(t *testing.T) {
	root := toolsRoot(t)
	e := embedded(t)
	w := startWorker(t, conn(t, e, "w"), fakeExecutor(t, root, "w", "", isolation.TierOCI), 4)
	nc := conn(t, e, "raw")
	subj := ""
	for _, o := range w.Status().Offers {
		if o.Tool == "py" {
			subj, _ = wire.RunSubject(isolation.TierOCI, "py", o.Digest)
		}
	}
	for i, c := range []struct {
		input    string
		acceptBy time.Duration
		want     []string // reply kinds in order; "hb+" one or more heartbeats
	}{
		{`{}`, 300 * time.Millisecond, []string{"accepted", "done"}},
		{`{"ms":350}`, 300 * time.Millisecond, []string{"accepted", "hb+", "done"}},
		{`{}`, -time.Second, nil},
	} {
		inbox := nats.NewInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		m := &nats.Msg{Subject: subj, Reply: inbox, Data: []byte(c.input), Header: nats.Header{}}
		m.Header.Set(wire.HCallID, fmt.Sprintf("raw-%d", i))
		m.Header.Set(wire.HAttempt, "1")
		m.Header.Set(wire.HAcceptBy, fmt.Sprint(time.Now().Add(c.acceptBy).UnixMilli()))
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for len(kinds) == 0 || kinds[len(kinds)-1] != "done" {
			r, err := sub.NextMsg(2 * time.Second)
			if c.want == nil && errors.Is(err, nats.ErrTimeout) {
				break
			}
			if err != nil {
				t.Fatalf("case %d: after %v: %v", i, kinds, err)
			}
			k := r.Header.Get(wire.HReply)
			if k == "hb" && len(kinds) > 0 && kinds[len(kinds)-1] == "hb+" {
				continue
			}
			if k == "hb" {
				k = "hb+"
			}
			kinds = append(kinds, k)
		}
		sub.Unsubscribe()
		if fmt.Sprint(kinds) != fmt.Sprint(c.want) {
			t.Errorf("case %d (%s, Accept-By in %v): replies %v, want %v", i, c.input, c.acceptBy, kinds, c.want)
		}
	}
}

// TestBusyRetryGoesToAFreeWorker: of two workers with one slot each, one is held by a long call.
// A call the queue group hands to the full one is answered busy; the gateway then asks the
// worker with a free slot directly, so no call fails busy while the fleet has room (before,
// it let the queue group pick again at random: one call in eight failed).
func TestBusyRetryGoesToAFreeWorker(t *testing.T) {
	root := toolsRoot(t)
	e := embedded(t)
	startWorker(t, conn(t, e, "a"), fakeExecutor(t, root, "a", "", isolation.TierOCI), 1)
	startWorker(t, conn(t, e, "b"), fakeExecutor(t, root, "b", "", isolation.TierOCI), 1)
	gw := gatewayExec(t, root, newGateway(t, conn(t, e, "gw"), fleet.GatewayConfig{}), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	long := make(chan *executor.Result, 1)
	go func() {
		r, err := call(ctx, gw, "py", `{"ms":3000}`, executor.WithTier(isolation.TierOCI))
		if err != nil {
			t.Error(err)
		}
		long <- r
	}()
	time.Sleep(300 * time.Millisecond) // the long call holds its worker's only slot
	ran := map[string]int{}
	for i := 0; i < 20; i++ {
		r, err := call(ctx, gw, "py", `{}`, executor.WithTier(isolation.TierOCI))
		if err != nil {
			t.Fatalf("call %d with one worker full and one free: %v", i, err)
		}
		ran[outputWorker(t, r)]++
	}
	if r := <-long; r != nil && ran[outputWorker(t, r)] != 0 {
		t.Fatalf("calls ran on the full worker: %v (the long call ran on %s)", ran, outputWorker(t, r))
	}
}

// TestSequentialCallsOnOneSlot: a caller's calls one after the other on a worker with one slot
// are never busy: the worker frees the slot before its "done" leaves (it used to free it after,
// so the next call could arrive first: under -race, within 30 calls).
func TestSequentialCallsOnOneSlot(t *testing.T) {
	root := toolsRoot(t)
	e := embedded(t)
	startWorker(t, conn(t, e, "a"), fakeExecutor(t, root, "a", "", isolation.TierOCI), 1)
	gw := gatewayExec(t, root, newGateway(t, conn(t, e, "gw"), fleet.GatewayConfig{MaxAttempts: 1}), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 500; i++ {
		if _, err := call(ctx, gw, "py", `{}`, executor.WithTier(isolation.TierOCI)); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}
