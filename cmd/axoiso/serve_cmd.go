package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/server"
	"github.com/axocoatl/isolation/server/mcpserver"
)

func init() {
	register(command{name: "serve", summary: "serve the HTTP API (+ MCP over streamable HTTP at /mcp) until SIGTERM", run: runServe})
	register(command{name: "mcp", summary: "serve the catalog as an MCP server over stdio", run: runMCP})
}

func runServe(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	var cf commonFlags
	cf.add(fs)
	// A daemon logs its calls by default; its --help says so too.
	fs.Set("log-level", "info")
	fs.Lookup("log-level").DefValue = "info"
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on; a non-loopback address requires a bearer token")
	token := fs.String("token", "", "bearer token (prefer --token-file or $"+server.TokenEnv+")")
	tokenFile := fs.String("token-file", "", "file holding the bearer token (mode 0600)")
	tlsCert := fs.String("tls-cert", "", "TLS certificate file (with --tls-key: serve HTTPS)")
	tlsKey := fs.String("tls-key", "", "TLS key file")
	var ff fleetFlags
	ff.add(fs, "route calls to a fleet's workers over NATS (URLs, comma-separated), or \"embedded\": an in-process nats-server without a port and a worker in this process (config fleet.nats); unset: run calls here, no NATS")
	maxBody := fs.Int64("max-body", 1<<20, "request body limit in bytes (larger: 413)")
	maxTimeout := fs.Duration("max-timeout", 60*time.Second, "cap on every call's timeout")
	maxConc := fs.Int("max-concurrent", 64, "calls running at once, HTTP and MCP together (over it: 429)")
	perTool := fs.Int("max-concurrent-per-tool", 0, "calls of one tool at once (0: no limit)")
	queueWait := fs.Duration("queue-wait", 0, "how long a call over --max-concurrent waits for a slot before 429")
	grace := fs.Duration("grace", 10*time.Second, "on SIGTERM/SIGINT, how long in-flight calls may finish")
	headerTimeout := fs.Duration("read-header-timeout", server.DefaultReadHeaderTimeout, "how long a client may take to send a request's headers (config serve.read_header_timeout)")
	bodyTimeout := fs.Duration("body-timeout", server.DefaultBodyTimeout, "how long a client may take to send a request's body; over it: 408 (config serve.body_timeout)")
	idleTimeout := fs.Duration("idle-timeout", server.DefaultIdleTimeout, "close keep-alive connections idle this long (config serve.idle_timeout)")
	maxSessions := fs.Int("max-mcp-sessions", server.DefaultMaxMCPSessions, "open MCP sessions; a new one beyond it closes the one idle longest (config serve.max_mcp_sessions; <0: no bound)")
	noMCP := fs.Bool("no-mcp", false, "do not serve MCP at /mcp")
	prewarm := fs.Bool("prewarm", true, "prepare every tool at start (compile Wasm modules, fill warm pools)")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	tok, err := server.LoadToken(*token, *tokenFile)
	if err != nil {
		return usageError{err.Error()}
	}
	cfg, log, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	if cfg.MaxTimeout == 0 || time.Duration(cfg.MaxTimeout) > *maxTimeout {
		cfg.MaxTimeout = axoiso.Duration(*maxTimeout)
	}
	// The config file's serve section applies where the flag was not given.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, d := range []struct {
		flag string
		v    *time.Duration
		cfg  axoiso.Duration
	}{{"read-header-timeout", headerTimeout, cfg.Serve.ReadHeaderTimeout}, {"body-timeout", bodyTimeout, cfg.Serve.BodyTimeout}, {"idle-timeout", idleTimeout, cfg.Serve.IdleTimeout}} {
		if !set[d.flag] && d.cfg != 0 {
			*d.v = time.Duration(d.cfg)
		}
	}
	if !set["max-mcp-sessions"] && cfg.Serve.MaxMCPSessions != 0 {
		*maxSessions = cfg.Serve.MaxMCPSessions
	}
	ff.resolve(&cfg.Fleet)
	var e *executor.Executor
	var collectors []prometheus.Collector
	if cfg.Fleet.NATS != "" {
		gs, err := newGatewayStack(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer gs.Close() // after srv.Close (deferred later, so run first)
		e, collectors = gs.exec, []prometheus.Collector{gs.metrics}
		*prewarm = false // the workers prepare their tools
	} else if e, err = axoiso.New(cfg); err != nil {
		return err
	}
	srv, err := server.New(server.Config{Collectors: collectors,
		ReadHeaderTimeout: *headerTimeout, BodyTimeout: *bodyTimeout, IdleTimeout: *idleTimeout, MaxMCPSessions: *maxSessions,
		Executor: e, Addr: *listen, Token: tok, TLSCertFile: *tlsCert, TLSKeyFile: *tlsKey,
		MaxBodyBytes: *maxBody, MaxTimeout: *maxTimeout, MaxConcurrent: *maxConc, QueueWait: *queueWait,
		MaxConcurrentPerTool: *perTool, GracePeriod: *grace, DisableMCP: *noMCP, Version: versionString(), Logger: log,
	})
	if err != nil {
		e.Close()
		return usageError{err.Error()}
	}
	defer srv.Close()
	if *prewarm {
		go prepareAll(ctx, e, log)
	}
	return srv.ListenAndServe(ctx)
}

func runMCP(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := newFlagSet("mcp", stderr)
	var cf commonFlags
	cf.add(fs)
	timeout := fs.Duration("timeout", 0, "timeout for every call (default: each tool's own)")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	e, log, err := cf.executor(stderr)
	if err != nil {
		return err
	}
	defer e.Close()
	return mcpserver.ServeStdio(ctx, e, mcpserver.Config{Version: versionString(), Logger: log, Timeout: *timeout})
}

// prepareAll prepares every tool (compiles Wasm modules, fills warm pools) so first calls are not
// cold.
func prepareAll(ctx context.Context, e *executor.Executor, log *slog.Logger) {
	tools, _ := e.Tools()
	for _, t := range tools {
		if err := e.Prepare(ctx, t.Name); err != nil && ctx.Err() == nil {
			log.Info("tool not prepared", "tool", t.Name, "error", err)
		}
	}
}
