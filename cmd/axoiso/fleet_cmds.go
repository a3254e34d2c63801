package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
)

func init() {
	register(command{name: "worker", summary: "run calls routed to this host by a fleet (NATS) until SIGTERM", run: runWorker})
	register(command{name: "fleet", summary: "list a fleet's workers: tiers, load, tool digests", run: runFleet})
	register(command{name: "tool", summary: "publish a tool folder to a fleet (tool publish DIR), or roll it back (tool rollback NAME)", run: runTool})
}

func runTool(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "publish" && args[0] != "rollback") {
		return usageError{"usage: axoiso tool publish [--name NAME] DIR | axoiso tool rollback NAME"}
	}
	sub := args[0]
	fs := newFlagSet("tool "+sub, stderr)
	var cf commonFlags
	cf.add(fs)
	var ff fleetFlags
	ff.add(fs, "NATS server URL(s), comma-separated (config fleet.nats)")
	name := fs.String("name", "", "publish under this name (default: the folder's name)")
	replicas := fs.Int("replicas", 0, "replicas of the buckets when they are created (config fleet.replicas; default 1)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"axoiso tool " + sub + " takes one argument"}
	}
	cfg, log, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	ff.resolve(&cfg.Fleet)
	if *replicas == 0 {
		*replicas = cfg.Fleet.Replicas
	}
	nc, err := fleetConnect(cfg.Fleet, "axoiso tool "+sub, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if sub == "rollback" {
		d, err := fleet.Rollback(ctx, nc, fs.Arg(0))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s\n", fs.Arg(0), d)
		return nil
	}
	dir := fs.Arg(0)
	if *name == "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return err
		}
		*name = filepath.Base(abs)
	}
	d, err := fleet.Publish(ctx, nc, dir, *name, *replicas)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s\n", *name, d)
	return nil
}

// fleetFlags are the flags of the commands that talk to a fleet; they win over the config's
// "fleet" section.
type fleetFlags struct {
	url, nkey, creds, tlsCA, tlsCert, tlsKey string
}

func (f *fleetFlags) add(fs *flag.FlagSet, what string) {
	fs.StringVar(&f.url, "nats", "", what)
	fs.StringVar(&f.nkey, "nkey-seed", "", "nkey user seed file for NATS (config fleet.nkey_seed_file)")
	fs.StringVar(&f.creds, "creds", "", "NATS JWT user credentials file (config fleet.creds_file)")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "CA file verifying the NATS servers (config fleet.tls_ca)")
	fs.StringVar(&f.tlsCert, "nats-tls-cert", "", "client certificate for NATS (config fleet.tls_cert)")
	fs.StringVar(&f.tlsKey, "nats-tls-key", "", "client key for NATS (config fleet.tls_key)")
}

// resolve lets the flags win over the config's fleet section.
func (f *fleetFlags) resolve(c *axoiso.FleetConfig) {
	for _, p := range []struct{ flag, cfg *string }{{&f.url, &c.NATS}, {&f.nkey, &c.NKeySeedFile}, {&f.creds, &c.CredsFile},
		{&f.tlsCA, &c.TLSCA}, {&f.tlsCert, &c.TLSCert}, {&f.tlsKey, &c.TLSKey}} {
		if *p.flag != "" {
			*p.cfg = *p.flag
		}
	}
}

func fleetConnect(c axoiso.FleetConfig, name string, log *slog.Logger) (*nats.Conn, error) {
	if c.NATS == "" {
		return nil, usageError{"no NATS server: give --nats URL (or fleet.nats in the config)"}
	}
	nc, err := fleet.Connect(c.NATS, name, fleet.ConnectConfig{NKeySeedFile: c.NKeySeedFile, CredsFile: c.CredsFile,
		TLSCA: c.TLSCA, TLSCert: c.TLSCert, TLSKey: c.TLSKey, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("NATS %s: %w", c.NATS, err)
	}
	return nc, nil
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func workerConfig(c axoiso.FleetConfig, nc *nats.Conn, e *executor.Executor, log *slog.Logger) fleet.WorkerConfig {
	return fleet.WorkerConfig{Conn: nc, Executor: e, Host: hostname(), Version: versionString(), Slots: c.Slots,
		Heartbeat: time.Duration(c.Heartbeat), Logger: log}
}

func runWorker(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := newFlagSet("worker", stderr)
	var cf commonFlags
	cf.add(fs)
	fs.Set("log-level", "info")
	var ff fleetFlags
	ff.add(fs, "NATS server URL(s), comma-separated (config fleet.nats)")
	published := fs.Bool("published", true, "also serve the tools published with `axoiso tool publish` (JetStream)")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	cfg, log, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	ff.resolve(&cfg.Fleet)
	if cfg.Fleet.NATS == "embedded" {
		return usageError{"a worker joins a fleet's NATS servers; --nats embedded is for serve"}
	}
	nc, err := fleetConnect(cfg.Fleet, "axoiso worker "+hostname(), log)
	if err != nil {
		return err
	}
	defer nc.Close()
	var st *fleet.Store
	if *published {
		if st, err = openStore(ctx, nc, cfg, log); err != nil {
			return err
		}
		defer st.Close()
		if _, err := os.Stat(cfg.ToolsRoot); err != nil {
			// No local tools: the published ones are the catalog.
			cfg.ToolsRoot = st.Root()
		}
	}
	e, err := axoiso.New(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	wc := workerConfig(cfg.Fleet, nc, e, log)
	wc.Store = st
	w, err := fleet.StartWorker(ctx, wc)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("worker stopping")
	return w.Close()
}

func openStore(ctx context.Context, nc *nats.Conn, cfg axoiso.Config, log *slog.Logger) (*fleet.Store, error) {
	dir := cfg.Fleet.StoreDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "fleet")
	}
	st, err := fleet.OpenStore(ctx, nc, fleet.StoreConfig{Dir: dir, Replicas: cfg.Fleet.Replicas, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := st.Watch(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// gatewayStack is serve's executor when calls go to a fleet: the catalog (for names, schemas and
// idempotent), the built-ins' names, and the gateway as the executor's Remote. With
// --nats embedded it also runs the nats-server and a worker in this process.
type gatewayStack struct {
	exec    *executor.Executor
	metrics *fleet.Metrics
	closers []func()
}

func (g *gatewayStack) Close() {
	for i := len(g.closers) - 1; i >= 0; i-- {
		g.closers[i]()
	}
}

func newGatewayStack(ctx context.Context, cfg axoiso.Config, log *slog.Logger) (_ *gatewayStack, err error) {
	gs := &gatewayStack{metrics: fleet.NewMetrics()}
	defer func() {
		if err != nil {
			gs.Close()
		}
	}()
	// One tracer provider for the gateway's executor and the embedded worker's: a routed call's
	// spans, on both sides, leave through one exporter.
	tp, flush, err := cfg.Tracing.TracerProvider(log)
	if err != nil {
		return nil, err
	}
	if flush != nil {
		gs.closers = append(gs.closers, func() {
			if err := flush(); err != nil {
				log.Warn("tracing", "error", err)
			}
		})
		cfg.TracerProvider = tp
	}
	digests := fleet.NewDigests()
	var gnc *nats.Conn
	var store *fleet.Store
	if cfg.Fleet.NATS == "embedded" {
		emb, err := fleet.StartEmbedded(fleet.EmbeddedConfig{})
		if err != nil {
			return nil, err
		}
		gs.closers = append(gs.closers, func() { emb.Close() })
		local, err := axoiso.New(cfg)
		if err != nil {
			return nil, err
		}
		gs.closers = append(gs.closers, func() { local.Close() })
		wnc, err := emb.Connect("axoiso worker (embedded)")
		if err != nil {
			return nil, err
		}
		gs.closers = append(gs.closers, wnc.Close)
		wc := workerConfig(cfg.Fleet, wnc, local, log)
		wc.Digests = digests
		w, err := fleet.StartWorker(ctx, wc)
		if err != nil {
			return nil, err
		}
		gs.closers = append(gs.closers, func() { w.Close() })
		if gnc, err = emb.Connect("axoiso gateway (embedded)"); err != nil {
			return nil, err
		}
	} else {
		if gnc, err = fleetConnect(cfg.Fleet, "axoiso gateway "+hostname(), log); err != nil {
			return nil, err
		}
		if store, err = openStore(ctx, gnc, cfg, log); err != nil {
			gnc.Close()
			return nil, err
		}
		gs.closers = append(gs.closers, func() { store.Close() })
	}
	gs.closers = append(gs.closers, gnc.Close)
	g, err := fleet.NewGateway(fleet.GatewayConfig{Conn: gnc, Digests: digests, Store: store, Metrics: gs.metrics, Logger: log,
		AcceptWindow: time.Duration(cfg.Fleet.AcceptWindow), HeartbeatTimeout: time.Duration(cfg.Fleet.HeartbeatTimeout)})
	if err != nil {
		return nil, err
	}
	gs.closers = append(gs.closers, func() { g.Close() })
	root := cfg.ToolsRoot
	if _, err := os.Stat(root); err != nil && store != nil {
		// No local tools: the published ones (the store's root holds the current version of each).
		root = store.Root()
	}
	cat, err := catalog.Open(root)
	if err != nil {
		return nil, fmt.Errorf("%w (set --tools, %s or tools_root in the config)", err, axoiso.EnvTools)
	}
	// The built-ins' names and schemas; their calls are routed like any other (tier None).
	gs.exec, err = executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.NewWithBuiltins()}, Remote: g,
		Strict: cfg.Strict, MaxOutputBytes: cfg.MaxOutputBytes, MaxTimeout: time.Duration(cfg.MaxTimeout),
		DefaultTimeout: time.Duration(cfg.DefaultTimeout), MaxMemoryMB: cfg.MaxMemoryMB, Logger: log, TracerProvider: cfg.TracerProvider})
	if err != nil {
		return nil, err
	}
	return gs, nil
}

func runFleet(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("fleet", stderr)
	var cf commonFlags
	cf.add(fs)
	var ff fleetFlags
	ff.add(fs, "NATS server URL(s), comma-separated (config fleet.nats)")
	wait := fs.Duration("wait", 500*time.Millisecond, "how long to collect the workers' answers")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	cfg, log, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	ff.resolve(&cfg.Fleet)
	nc, err := fleetConnect(cfg.Fleet, "axoiso fleet", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ws, err := fleet.Discover(ctx, nc, *wait)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, ws)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tWORKER\tTIER\tSLOTS\tBUSY\tWARM\tCALLS\tREFUSED")
	for _, w := range ws {
		for _, t := range w.Tiers {
			fmt.Fprintf(tw, "%s\t%.12s\t%s\t%d\t%d\t%d\t%d\t%d\n", w.Host, w.ID, t.Tier, t.Slots, t.Busy, t.Warm, t.Calls, t.Refused)
		}
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOOL\tDIGEST\tTIERS\tWORKERS")
	type key struct{ tool, digest string }
	tiers := map[key]map[isolation.Tier]bool{}
	workers := map[key]map[string]bool{}
	var keys []key
	for _, w := range ws {
		for _, o := range w.Offers {
			k := key{o.Tool, o.Digest}
			if tiers[k] == nil {
				tiers[k], workers[k] = map[isolation.Tier]bool{}, map[string]bool{}
				keys = append(keys, k)
			}
			tiers[k][o.Tier], workers[k][w.ID] = true, true
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].tool != keys[j].tool {
			return keys[i].tool < keys[j].tool
		}
		return keys[i].digest < keys[j].digest
	})
	for _, k := range keys {
		var ts []string
		for _, t := range isolation.Tiers() {
			if tiers[k][t] {
				ts = append(ts, t.String())
			}
		}
		fmt.Fprintf(tw, "%s\t%.12s\t%s\t%d\n", k.tool, k.digest, strings.Join(ts, ","), len(workers[k]))
	}
	fmt.Fprintf(tw, "(%d workers)\n", len(ws))
	return tw.Flush()
}
