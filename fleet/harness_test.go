package fleet_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

// fakeTier stands in for a tier in routing and timing tests (the issue allows "a fake slow
// tier"): it runs no tool; a call sleeps {"ms":N} (cancellable), appends a line to the file
// {"mark":NAME} in markDir before sleeping (the side-effect counter, shared across processes),
// and answers {"tier","worker","version","input_sha256"}. As a real Wasmtime tier would, its Wasmtime refuses anything but
// Wasm.
type fakeTier struct {
	tier    isolation.Tier
	worker  string
	markDir string
}

func (f *fakeTier) Tier() isolation.Tier { return f.tier }
func (f *fakeTier) Probe(context.Context) isolation.Availability {
	return isolation.Availability{Available: true, Backend: "fake"}
}
func (f *fakeTier) Supports(req isolation.RuntimeRequirement) string {
	if f.tier == isolation.TierWasm && req != isolation.RequireWasm {
		return "Wasm only"
	}
	return ""
}
func (f *fakeTier) Close() error { return nil }
func (f *fakeTier) Run(ctx context.Context, c sandbox.Call) (sandbox.Outcome, error) {
	var in struct {
		MS   int    `json:"ms"`
		Mark string `json:"mark"`
	}
	json.Unmarshal(c.Input, &in)
	if in.Mark != "" && f.markDir != "" && catalog.ValidateName(in.Mark) == nil {
		fh, err := os.OpenFile(filepath.Join(f.markDir, in.Mark), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return sandbox.Outcome{}, err
		}
		fmt.Fprintf(fh, "%s %s %d\n", f.worker, c.ID, os.Getpid())
		fh.Close()
	}
	t := time.NewTimer(time.Duration(in.MS) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		if in.Mark != "" && f.markDir != "" && catalog.ValidateName(in.Mark) == nil {
			os.WriteFile(filepath.Join(f.markDir, in.Mark+".cancelled"), []byte(c.ID), 0o644)
		}
		return sandbox.Outcome{}, sandbox.ContextError(ctx)
	case <-t.C:
	}
	// A published tool's folder may say which version it is.
	version, _ := os.ReadFile(filepath.Join(c.Dir, "version"))
	sum := sha256.Sum256(c.Input)
	out, _ := json.Marshal(map[string]string{"tier": f.tier.String(), "worker": f.worker, "version": string(version), "input_sha256": hex.EncodeToString(sum[:])})
	return sandbox.Outcome{Output: out, Backend: "fake"}, nil
}

// writeTool writes a tool folder.
func writeTool(t testing.TB, root, name, manifest string) {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tool.json"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.py"), []byte("print('x')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// toolsRoot has: py (Python: ideal Firecracker, then Oci, then Wasmtime), py-idem (the same,
// idempotent), any (Arbitrary).
func toolsRoot(t testing.TB) string {
	root := t.TempDir()
	writeTool(t, root, "py", `{"runtime":"Python","entrypoint":"main.py","timeout_ms":20000}`)
	writeTool(t, root, "py-idem", `{"runtime":"Python","entrypoint":"main.py","timeout_ms":20000,"idempotent":true}`)
	writeTool(t, root, "any.tool", `{"runtime":"Arbitrary","entrypoint":"main.py"}`)
	return root
}

func fakeExecutor(t testing.TB, root, worker, markDir string, tiers ...isolation.Tier) *executor.Executor {
	t.Helper()
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	var sbs []sandbox.Sandbox
	for _, tr := range tiers {
		sbs = append(sbs, &fakeTier{tier: tr, worker: worker, markDir: markDir})
	}
	e, err := executor.New(executor.Config{Catalog: cat, Sandboxes: sbs})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// gatewayExec is a gateway's executor: the catalog, no sandboxes, the fleet as its Remote.
func gatewayExec(t testing.TB, root string, g *fleet.Gateway, strict bool) *executor.Executor {
	t.Helper()
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	e, err := executor.New(executor.Config{Catalog: cat, Remote: g, Strict: strict})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// natsServer starts a nats-server on a loopback port (subprocess workers dial it).
func natsServer(t testing.TB) *server.Server {
	t.Helper()
	return startServer(t, &server.Options{ServerName: "t-" + fmt.Sprint(time.Now().UnixNano())})
}

// startServer starts a nats-server with opts on a free loopback port, stopped at the end of t.
func startServer(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoSigs, opts.NoLog = "127.0.0.1", -1, true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func startWorker(t testing.TB, nc *nats.Conn, e *executor.Executor, slots int) *fleet.Worker {
	t.Helper()
	sl := map[isolation.Tier]int{}
	for _, tr := range isolation.Tiers() {
		sl[tr] = slots
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := fleet.StartWorker(ctx, fleet.WorkerConfig{Conn: nc, Executor: e, Slots: sl, Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// workerEnv, set in a re-executed test binary, makes it a worker process (see TestMain).
const workerEnv = "AXOISO_FLEET_TEST_WORKER"

type workerSpec struct {
	URL     string   `json:"url"`
	Root    string   `json:"root"`
	Name    string   `json:"name"`
	MarkDir string   `json:"mark_dir"`
	Tiers   []string `json:"tiers"`
	Slots   int      `json:"slots"`
	// Store: the worker takes the published tools (JetStream) into this directory.
	Store string `json:"store,omitempty"`
	// NKeySeed authenticates with this seed.
	NKeySeed string `json:"nkey_seed,omitempty"`
	// RealWasm adds the real Wasm tier (wazero).
	RealWasm bool `json:"real_wasm,omitempty"`
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(workerEnv); spec != "" {
		os.Exit(workerMain(spec))
	}
	if spec := os.Getenv(natsEnv); spec != "" {
		os.Exit(natsMain(spec))
	}
	os.Exit(m.Run())
}

// workerMain runs a worker until stdin closes or SIGTERM; it prints "ready <id>" once it serves.
func workerMain(specJSON string) int {
	var sp workerSpec
	if err := json.Unmarshal([]byte(specJSON), &sp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var tiers []isolation.Tier
	for _, n := range sp.Tiers {
		tr, err := isolation.ParseTier(n)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		tiers = append(tiers, tr)
	}
	cat, err := catalog.Open(sp.Root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var sbs []sandbox.Sandbox
	for _, tr := range tiers {
		sbs = append(sbs, &fakeTier{tier: tr, worker: sp.Name, markDir: sp.MarkDir})
	}
	if sp.RealWasm {
		ws, err := wasm.New(wasm.Config{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		sbs = append(sbs, ws)
		tiers = append(tiers, isolation.TierWasm)
	}
	e, err := executor.New(executor.Config{Catalog: cat, Sandboxes: sbs})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	opts := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond), nats.Name("worker " + sp.Name)}
	if sp.NKeySeed != "" {
		opt, err := fleet.NKeySeedOption([]byte(sp.NKeySeed))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		opts = append(opts, opt)
	}
	nc, err := nats.Connect(sp.URL, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	slots := map[isolation.Tier]int{}
	for _, tr := range tiers {
		slots[tr] = sp.Slots
	}
	ctx := context.Background()
	cfg := fleet.WorkerConfig{Conn: nc, Executor: e, Host: sp.Name, Slots: slots, Heartbeat: 100 * time.Millisecond}
	if sp.Store != "" {
		st, err := fleet.OpenStore(ctx, nc, fleet.StoreConfig{Dir: sp.Store, Grace: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		if err := st.Watch(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer st.Close()
		cfg.Store = st
	}
	w, err := fleet.StartWorker(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("ready %s\n", w.ID())
	waitForStop()
	w.Close()
	nc.Close()
	e.Close()
	return 0
}

// proc is a worker subprocess.
type proc struct {
	cmd   *exec.Cmd
	id    string
	stdin io.WriteCloser
}

// spawnWorker re-executes the test binary as a worker; wrap (e.g. ip netns exec NS) prefixes the
// command.
func spawnWorker(t testing.TB, sp workerSpec, wrap ...string) *proc {
	t.Helper()
	b, _ := json.Marshal(sp)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, wrap...), self, "-test.run=^$")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), workerEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				ready <- id
			}
		}
	}()
	select {
	case p.id = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("worker %s did not start", sp.Name)
	}
	return p
}

// marks counts the side-effect lines of a mark.
func marks(t testing.TB, dir, mark string) int {
	b, err := os.ReadFile(filepath.Join(dir, mark))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func call(ctx context.Context, e *executor.Executor, tool, input string, opts ...executor.Option) (*executor.Result, error) {
	return e.Execute(ctx, tool, []byte(input), opts...)
}

// concurrentOutcomes makes n calls of tool with input at once and counts their outcomes by
// error kind ("ok" for a result).
func concurrentOutcomes(ctx context.Context, e *executor.Executor, n int, tool, input string, opts ...executor.Option) map[string]int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	kinds := map[string]int{}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := call(ctx, e, tool, input, opts...)
			mu.Lock()
			kinds[isolation.KindName(err)]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return kinds
}

// waitForStop blocks a helper process until its parent closes its stdin or sends SIGTERM.
func waitForStop() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	stdin := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdin) }()
	select {
	case <-sig:
	case <-stdin:
	}
}

func outputWorker(t testing.TB, r *executor.Result) string {
	t.Helper()
	var o struct{ Worker, Tier string }
	if err := json.Unmarshal(r.Output, &o); err != nil {
		t.Fatalf("output %s: %v", r.Output, err)
	}
	return o.Worker
}

func mustCatalog(t testing.TB, root string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustTool(t testing.TB, root, name string) *catalog.Tool {
	t.Helper()
	tl, err := mustCatalog(t, root).Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// writeWasmTool copies examples/tools/hello-wasm's manifest and the built module into root.
func writeWasmTool(t testing.TB, root, module string) {
	t.Helper()
	dir := filepath.Join(root, "hello-wasm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := os.ReadFile("../examples/tools/hello-wasm/tool.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(module)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tool.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hello-wasm.wasm"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// natsEnv, set in a re-executed test binary, makes it a nats-server cluster node.
const natsEnv = "AXOISO_FLEET_TEST_NATS"

type natsSpec struct {
	Name string `json:"name"`
	IP   string `json:"ip"`
	// Port is the client port (0: 4222; -1: any free one).
	Port int `json:"port,omitempty"`
	// Routes, when set, make the node a cluster member (cluster port 6222).
	Routes []string `json:"routes,omitempty"`
	Store  string   `json:"store"`
}

func natsMain(specJSON string) int {
	var sp natsSpec
	if err := json.Unmarshal([]byte(specJSON), &sp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var routes []*url.URL
	for _, r := range sp.Routes {
		u, err := url.Parse(r)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		routes = append(routes, u)
	}
	// Pings every second, two missed: a peer whose link was cut (no reset) is dropped in ~3 s,
	// and with it its subscriptions.
	if sp.Port == 0 {
		sp.Port = 4222
	}
	opts := &server.Options{ServerName: sp.Name, Host: sp.IP, Port: sp.Port, NoSigs: true, NoLog: os.Getenv("AXOISO_FLEET_TEST_NATS_LOG") == "",
		PingInterval: time.Second, MaxPingsOut: 2, JetStream: true, StoreDir: sp.Store}
	if len(routes) > 0 {
		opts.Cluster, opts.Routes = server.ClusterOpts{Name: "axoiso", Host: sp.IP, Port: 6222}, routes
	}
	s, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if os.Getenv("AXOISO_FLEET_TEST_NATS_LOG") != "" {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		fmt.Fprintln(os.Stderr, "not ready")
		return 2
	}
	fmt.Println("ready " + s.ClientURL())
	waitForStop()
	s.Shutdown()
	return 0
}
