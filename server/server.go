// Package server is the HTTP service over an executor: the tool API under /v1, Prometheus metrics,
// an OpenAPI document, and the MCP streamable HTTP transport at /mcp.
//
// HTTP API (the OpenAPI 3 document served at /openapi.json is the reference):
//
//	POST /v1/tools/{name}/execute   body: the input JSON → 200 with the output JSON
//	POST /v1/tools/{name}/call      the same call → 200 with the envelope
//	GET  /v1/tools                  the catalog
//	GET  /v1/tools/{name}           one tool, with its input schema and the tier it would run in
//	GET  /v1/tiers                  each tier's availability (reason, fix) and warm pools
//	GET  /healthz                   liveness (never needs the token)
//	GET  /metrics                   Prometheus
//	GET  /openapi.json              this API's OpenAPI 3 document
//	     /mcp                       MCP streamable HTTP (see package mcpserver)
//
// Execute query parameters: envelope=1 returns the envelope {"output","tier","degraded",
// "duration_ms","stderr","call_id",…} instead of the bare output (so does
// "Accept: application/vnd.axocoatl.envelope+json", answered with that content type);
// timeout=2s sets the call's timeout (a Go duration, capped by Config.MaxTimeout); tier=Oci runs
// only in that tier; strict=1 refuses a downgrade. Every execute response carries X-Call-Id.
//
// Errors are {"error":{"kind","message","call_id","tier","retryable"}}. A call's kind and status
// come from isolation's outcome table (isolation.OutcomeOf); retryable ones carry Retry-After: 1:
//
//	400 invalid_tool_name, invalid_input (also bad query parameters)
//	404 tool_not_found
//	409 downgrade_refused (a weaker tier was available but the policy refuses it)
//	422 tier_unavailable (no tier on this host can run the tool; not temporary)
//	424 invalid_tool (the tool's folder or manifest is broken: the operator's to fix)
//	429 busy (over the global or the tool's concurrency limit; retryable)
//	502 tool_failed, output_missing, output_invalid, output_too_large
//	503 sandbox_failed (the tier failed, not the tool; retryable), busy while shutting down,
//	    canceled (the server shut down before the call ended; retryable)
//	504 timeout
//	507 memory_limit
//	500 internal (a fault of the service itself)
//
// and, for requests rather than calls: 401 unauthorized, 403 forbidden, 404 not_found, 405
// method_not_allowed, 408 request_timeout (the body did not arrive within Config.BodyTimeout),
// 413 request_too_large.
//
// Concurrency: a call over its tool's limit is refused at once; a call over the global limit waits
// up to Config.QueueWait for a slot (0: refused at once), then gets 429.
//
// Security: the server listens on loopback by default. Listening on any other address requires a
// bearer token (Authorization: Bearer …), compared in constant time; when a token is set it is
// required on every route but /healthz whatever the address. On loopback without a token, requests
// whose Host is not a loopback name are refused (DNS rebinding), and cross-origin browser requests
// are refused everywhere.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/server/internal/metrics"
	"github.com/axocoatl/isolation/server/mcpserver"
)

// Defaults for unset Config fields.
const (
	DefaultAddr          = "127.0.0.1:8080"
	DefaultMaxBodyBytes  = 1 << 20
	DefaultMaxTimeout    = 60 * time.Second
	DefaultMaxConcurrent = 64
	DefaultGracePeriod   = 10 * time.Second
	// Connection deadlines: slow or stalled clients must not hold connections (and file
	// descriptors) for long.
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout       = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	// DefaultMaxMCPSessions bounds open MCP sessions.
	DefaultMaxMCPSessions = mcpserver.DefaultMaxSessions
	// TokenEnv is the environment variable LoadToken reads last.
	TokenEnv = "AXOISO_TOKEN"
	// MinTokenLength is the shortest bearer token accepted.
	MinTokenLength = 16
)

// EnvelopeMediaType is the Accept value that asks for the envelope.
const EnvelopeMediaType = "application/vnd.axocoatl.envelope+json"

// ErrTokenRequired: the address is not loopback and no token is configured.
var ErrTokenRequired = errors.New("server: listening on a non-loopback address requires a bearer token (--token, --token-file or " + TokenEnv + ")")

// Config configures a Server. New copies it.
type Config struct {
	// Executor runs the calls. Required. The Server owns it from New on: Close closes it.
	Executor *executor.Executor
	// Addr is the TCP address to listen on (default 127.0.0.1:8080).
	Addr string
	// Token is the bearer token. Required when Addr is not a loopback address; when set it is
	// required on every route but /healthz. See LoadToken.
	Token string
	// TLSCertFile and TLSKeyFile, when both set, make ListenAndServe serve HTTPS.
	TLSCertFile, TLSKeyFile string
	// MaxBodyBytes bounds request bodies (default 1 MiB); larger is 413.
	MaxBodyBytes int64
	// MaxTimeout caps every call's timeout, including ?timeout= (default 60 s). Set the
	// executor's Config.MaxTimeout to the same value so tools' own timeouts are capped with a
	// precise message; the server enforces it as a backstop too.
	MaxTimeout time.Duration
	// MaxConcurrent bounds calls running at once, HTTP and MCP together (default 64; <0: no limit).
	MaxConcurrent int
	// QueueWait is how long a call over MaxConcurrent waits for a slot before 429 (default 0).
	QueueWait time.Duration
	// MaxConcurrentPerTool bounds calls of one tool at once (0: no limit); ToolConcurrency
	// overrides it per tool name. Over it is 429 at once.
	MaxConcurrentPerTool int
	ToolConcurrency      map[string]int
	// GracePeriod is how long shutdown waits for in-flight requests before cancelling them
	// (default 10 s).
	GracePeriod time.Duration
	// ReadHeaderTimeout bounds reading a request's headers (default 10 s; <0: none).
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds reading a request's body, counted from the end of its headers (default
	// 10 s; <0: none). Over it the request is answered 408 request_timeout and its connection
	// closed.
	BodyTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long (default 60 s; <0: none).
	IdleTimeout time.Duration
	// MaxMCPSessions bounds open MCP sessions (default 256; <0: none). A new session beyond it
	// closes the one idle longest, or is refused (429 busy) when every session has a request in
	// flight.
	MaxMCPSessions int
	// DisableMCP leaves /mcp unmounted.
	DisableMCP bool
	// Version is reported by the MCP server and /healthz.
	Version string
	// Logger receives request and lifecycle records; nil logs nowhere. See NewLogger.
	Logger *slog.Logger
	// Collectors are more metrics served at /metrics (a fleet gateway's routed calls).
	Collectors []prometheus.Collector
}

// Server serves the API. Handler is safe for concurrent use; Close is idempotent.
type Server struct {
	cfg       Config
	exec      *executor.Executor
	log       *slog.Logger
	metrics   *metrics.Metrics
	limits    *limiter
	mcp       *mcpserver.Server
	handler   http.Handler
	mux       *http.ServeMux
	tokenHash [32]byte
	loopback  bool

	// shutdown is cancelled when shutdown begins: it ends long-lived MCP event streams, which
	// would otherwise hold the graceful shutdown for its whole grace period.
	shutdown       context.Context
	cancelShutdown context.CancelFunc
	// stopCalls is cancelled when the grace period is over: it cancels MCP calls in flight, whose
	// contexts are the MCP sessions', not the HTTP server's.
	stopCalls       context.Context
	cancelStopCalls context.CancelFunc

	inFlight atomic.Int64 // requests inside the handler

	closeOnce sync.Once
	closeErr  error
}

// New validates cfg and returns a server. It does not listen yet.
func New(cfg Config) (*Server, error) {
	if cfg.Executor == nil {
		return nil, errors.New("server: Config.Executor is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = DefaultMaxTimeout
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = DefaultGracePeriod
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout}, {&cfg.BodyTimeout, DefaultBodyTimeout}, {&cfg.IdleTimeout, DefaultIdleTimeout}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("server: TLSCertFile and TLSKeyFile must be set together")
	}
	s := &Server{cfg: cfg, exec: cfg.Executor, log: cfg.Logger, loopback: IsLoopback(cfg.Addr)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token != "" {
		if err := checkToken(cfg.Token); err != nil {
			return nil, err
		}
		s.tokenHash = sha256.Sum256([]byte(cfg.Token))
	} else if !s.loopback {
		return nil, ErrTokenRequired
	}
	s.shutdown, s.cancelShutdown = context.WithCancel(context.Background())
	s.stopCalls, s.cancelStopCalls = context.WithCancel(context.Background())
	s.metrics = metrics.New(cfg.Executor)
	for _, c := range cfg.Collectors {
		if err := s.metrics.Registry().Register(c); err != nil {
			return nil, fmt.Errorf("server: metrics: %w", err)
		}
	}
	s.limits = newLimiter(cfg.MaxConcurrent, cfg.QueueWait, cfg.MaxConcurrentPerTool, cfg.ToolConcurrency, s.metrics)
	if !cfg.DisableMCP {
		s.mcp = mcpserver.New(cfg.Executor, mcpserver.Config{
			Name:    "axoiso",
			Version: cfg.Version,
			Logger:  s.log.With(slog.String("component", "mcp")),
			Gate:    s.gate,
			Observe: s.metrics.ObserveCall,
			Stop:    s.stopCalls,
			// MCP calls take the tool's own timeout; the executor's MaxTimeout caps it.
		})
	}
	s.mux = s.routes()
	s.handler = s.middleware(s.mux)
	return s, nil
}

// Handler is the whole API, with authentication, limits and metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// Addr is the configured listen address.
func (s *Server) Addr() string { return s.cfg.Addr }

// ListenAndServe listens on Config.Addr and serves until ctx ends, then shuts down gracefully:
// it stops accepting, lets in-flight requests finish for up to Config.GracePeriod, cancels the
// ones still running (their sandboxes clean up) and lets them answer 503 canceled before the
// connections close, refuses calls that arrive meanwhile (503 busy), and closes the executor,
// which tears down warm pools. It returns nil after a shutdown caused by ctx, or the error that stopped serving.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		s.Close()
		return fmt.Errorf("server: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve is ListenAndServe on an existing listener (which it closes).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !IsLoopback(ln.Addr().String()) && s.cfg.Token == "" {
		ln.Close()
		s.Close()
		return ErrTokenRequired
	}
	// Calls must outlive ctx during the grace period, so requests get a context that is
	// cancelled only when the grace period is over.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	hs := &http.Server{
		Handler:           s.handler,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: max(s.cfg.ReadHeaderTimeout, 0),
		// http.Server falls back on ReadTimeout, then no limit, when IdleTimeout is 0.
		IdleTimeout: max(s.cfg.IdleTimeout, 0),
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	hs.RegisterOnShutdown(s.cancelShutdown)
	errc := make(chan error, 1)
	go func() {
		var err error
		if s.cfg.TLSCertFile != "" {
			err = hs.ServeTLS(ln, s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
		} else {
			err = hs.Serve(ln)
		}
		errc <- err
	}()
	s.log.Info("serving", slog.String("addr", ln.Addr().String()), slog.Bool("token", s.cfg.Token != ""), slog.Bool("tls", s.cfg.TLSCertFile != ""))

	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
		s.log.Info("shutting down", slog.Duration("grace", s.cfg.GracePeriod), slog.Int64("in_flight", s.inFlight.Load()))
		graceCtx, cancel := context.WithTimeout(context.Background(), s.cfg.GracePeriod)
		err := hs.Shutdown(graceCtx)
		cancel()
		if err != nil {
			s.log.Warn("grace period over: cancelling in-flight requests", slog.Int64("in_flight", s.inFlight.Load()))
			s.cancelStopCalls() // first: MCP requests check it when their contexts end
			cancelBase()
			// The cancelled handlers answer 503 canceled: let them write it before the connections
			// close (closing at once left every client with an empty reply). Handlers end promptly
			// once their context is cancelled; hijacked or stuck ones are closed after drainTimeout.
			drainCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
			if err := hs.Shutdown(drainCtx); err != nil {
				s.log.Warn("connections still busy after cancelling: closing them", slog.Int64("in_flight", s.inFlight.Load()))
				hs.Close()
			}
			cancel()
		}
		<-errc
	}
	cancelBase()
	// Handlers end promptly once their context is cancelled; wait for them before the
	// executor closes under them.
	s.waitIdle(drainTimeout)
	closeErr := s.Close()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("server: %w", serveErr)
	}
	if closeErr != nil {
		return fmt.Errorf("server: closing the executor: %w", closeErr)
	}
	s.log.Info("stopped")
	return nil
}

// drainTimeout bounds how long shutdown waits, after cancelling the calls still running at the
// end of the grace period, for their handlers to answer.
const drainTimeout = 5 * time.Second

func (s *Server) waitIdle(max time.Duration) {
	deadline := time.Now().Add(max)
	for s.inFlight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// Close ends MCP sessions and closes the executor (tearing down its pools). Idempotent. It does
// not stop a running ListenAndServe: cancel its context instead.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancelShutdown()
		s.cancelStopCalls()
		if s.mcp != nil {
			for ss := range s.mcp.MCP().Sessions() {
				ss.Close()
			}
		}
		s.closeErr = s.exec.Close()
	})
	return s.closeErr
}

// IsLoopback reports whether a host:port address listens on loopback only ("localhost",
// 127.0.0.0/8, ::1). An empty host ("":8080) listens everywhere and is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadToken returns the bearer token from, in order: value (a flag), the file at path (trimmed;
// refused if other users can read it), or the AXOISO_TOKEN environment variable. "" when none is
// set. A token must be at least MinTokenLength characters without whitespace.
func LoadToken(value, path string) (string, error) {
	tok := value
	if tok == "" && path != "" {
		fi, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("token file %s is readable by other users (mode %v): chmod 600 it", path, fi.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("token file %s is empty", path)
		}
	}
	if tok == "" {
		tok = os.Getenv(TokenEnv)
	}
	if tok == "" {
		return "", nil
	}
	if err := checkToken(tok); err != nil {
		return "", err
	}
	return tok, nil
}

func checkToken(tok string) error {
	if len(tok) < MinTokenLength {
		return fmt.Errorf("server: the bearer token must be at least %d characters", MinTokenLength)
	}
	if strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("server: the bearer token must not contain whitespace or control characters")
	}
	return nil
}

// authorized compares the request's bearer token with the configured one in constant time
// (hashing both first, so the length does not leak either).
func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(h[len(prefix):])))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

// NewLogger returns a slog logger writing text, or JSON when asJSON, at level to w.
func NewLogger(w io.Writer, asJSON bool, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if asJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
